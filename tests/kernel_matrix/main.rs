//! The kernel matrix: dsbox's runtime on a second kernel. These tests exercise the code
//! paths that the development machines (Linux 6.18, cgroup v1 controllers, landlock ABI 7)
//! cannot: the cgroup v2 backend for real (limits, OOM from memory.events, the pids limit,
//! cgroup.kill, cleanup, gc, delegation), landlock at an older ABI (2), and what
//! `dsbox doctor` reports there.
//!
//! They run on a pure cgroup v2 host as root and skip themselves (one note on stderr)
//! anywhere else, so `cargo test --workspace` passes on the hybrid development machines.
//! `tests/kernel_matrix/run-in-vm.sh` (`./dev test-vm`, part of `./dev test` and CI) runs
//! them inside `../shared/tools/vm-run` (Debian's 6.1 kernel) with
//! `DSBOX_KERNEL_MATRIX=require`, where a skip is a failure. docs/kernel-matrix.md lists
//! the runtime functions each test covers.

mod cgroups;
mod doctor;
mod fixture;
mod landlock;
mod userns;
mod zygote;
