//! dsbox-runtime: starts a process — or an empty "shell" that other processes join — in a
//! sandbox built from Linux namespaces, cgroups (v1 and v2), seccomp, landlock,
//! capabilities and rlimits, with `pivot_root` into a read-only root filesystem and
//! writable, size-limited scratch directories. No daemon and no helper binaries: one
//! helper process, the spawner (a fork of the runtime, [`process::spawner`]), clones the
//! sandboxes' processes.
//!
//! Main types: [`SandboxSpec`] (what to build; [`spec::SandboxBuilder`] validates it,
//! [`oci::from_bundle`] reads an OCI bundle), [`Sandbox`] (the running sandbox: wait,
//! kill, destroy, [`JoinPlan`]) and [`ExitReport`] (status, kill reason, timings).
//! docs/runtime.md lists the start path step by step with the function of each step.
//!
//! ```no_run
//! use dsbox_runtime::{Sandbox, SandboxSpec, SpawnOptions};
//! let spec = SandboxSpec::builder()
//!     .with_command(["/usr/bin/python3", "-c", "print(6 * 7)"])
//!     .with_memory(512 << 20)
//!     .with_pids(256)
//!     .build()?;
//! let mut sandbox = Sandbox::spawn(&spec, SpawnOptions::default())?;
//! let report = sandbox.wait()?;
//! println!("exit {} after {:?}", report.code(), report.timings.start_latency());
//! sandbox.destroy()?;
//! # Ok::<(), dsbox_runtime::Error>(())
//! ```

pub mod attach;
pub mod capabilities;
pub mod cgroups;
pub mod doctor;
pub mod error;
pub mod gc;
pub mod landlock;
pub mod namespaces;
pub mod oci;
pub mod process;
pub mod rlimits;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;

pub use error::{Error, Result};
pub use sandbox::{
    ExitReport, ExitStatus, Join, JoinPlan, KillReason, Sandbox, SpawnOptions, Stdio, Timings,
};
pub use spec::{SandboxSpec, parse_duration, parse_size};
