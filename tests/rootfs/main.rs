//! Integration tests: rootfs. `dsbox rootfs ...` end to end with real installers (uv, and
//! pip without uv), real Python, a private mount namespace standing in for the sandbox
//! until `dsbox run --rootfs` is wired (then `sandbox.rs` runs inside real sandboxes).
//!
//! Big environments (`analysis`) are built once per run into a store under target/ and
//! shared; tests that change a store use their own scratch store.

mod bench;
mod build;
mod common;
mod errors;
mod pip;
mod sandbox;
mod store;
