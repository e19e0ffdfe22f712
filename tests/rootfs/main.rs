//! Integration tests: rootfs.
