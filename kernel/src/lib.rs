//! dsbox-kernel: persistent Python kernels and the Rust side that talks to them.
//!
//! A kernel is a small Python program ([`KERNEL_PY`], embedded in the binary) that keeps
//! one namespace across cells and talks to the runtime over its own socket, never over
//! stdin/stdout, with length-prefixed JSON frames ([`protocol`]). Cells return ordered,
//! Jupyter-shaped items ([`OutputItem`]) capped per cell so the runtime's memory stays
//! bounded ([`output`]).
//!
//! Main types:
//! * [`KernelClient`] — async (tokio) client of one kernel over a `UnixStream`:
//!   [`KernelClient::execute`] returns a [`CellResult`]; timeouts interrupt the kernel
//!   through a [`KernelControl`] the owner implements, then give it up.
//! * [`StandaloneKernel`] — a kernel as a plain child process (tests, trusted fallback;
//!   **unsafe for untrusted code**: no sandbox).
//! * [`zygote`] — the zygote's Python side ([`ZYGOTE_PY`]) and its message types: it
//!   preloads modules, forks kernel children and joins them to sandboxes.
//!
//! ```no_run
//! use std::time::Duration;
//! use dsbox_kernel::{StandaloneConfig, StandaloneKernel};
//! # async fn demo() -> dsbox_kernel::Result<()> {
//! let mut kernel = StandaloneKernel::start(StandaloneConfig::new("/usr/bin/python3")).await?;
//! kernel.execute("x = 20", Duration::from_secs(5)).await?;
//! let cell = kernel.execute("x * 2 + 2", Duration::from_secs(5)).await?;
//! assert_eq!(cell.result_text(), Some("42"));
//! # Ok(()) }
//! ```

pub mod client;
pub mod files;
pub mod output;
pub mod pool;
pub mod protocol;
pub mod sandbox;
pub mod standalone;
pub mod supervisor;
pub mod template;
pub mod zygote;

pub use client::{
    CellResult, CellStatus, CellTimings, ClientConfig, KernelClient, KernelControl, KernelError,
    KernelInfo, LostReason, Result,
};
pub use output::{OutputCaps, OutputCollector, OutputItem, Truncation};
pub use pool::{
    KernelManager, KernelTimings, ManagerConfig, SandboxError, Template, TemplateStats,
};
pub use protocol::{MimeBundle, StreamName};
pub use sandbox::{AcquireOptions, AcquireTimings, DataMount, Interrupter, SandboxKernel};
pub use standalone::{StandaloneConfig, StandaloneKernel};
pub use supervisor::ZygoteState;
pub use template::{KernelLimits, TemplateConfig, TemplateRootfs};

/// The kernel program (Python, stdlib only). Run it as a script with
/// `--channel-fd N`, or import it and call `serve(fd)` (the zygote does).
pub const KERNEL_PY: &str = include_str!("../python/dsbox_kernel.py");

/// The zygote program (Python, stdlib only): preload, fork, join (see [`zygote`]).
pub const ZYGOTE_PY: &str = include_str!("../python/dsbox_zygote.py");
