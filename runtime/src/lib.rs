//! dsbox-runtime: starts a process in a sandbox built from Linux namespaces, cgroups
//! (v1 and v2), seccomp, landlock, capabilities and rlimits, with `pivot_root` into a
//! read-only root filesystem and writable, size-limited scratch directories.
