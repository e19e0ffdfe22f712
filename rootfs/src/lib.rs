//! dsbox-rootfs: builds the read-only Python environments sandboxes run in (profiles as
//! data, locks, compiled bytecode, a content-addressed store) and imports OCI images.
