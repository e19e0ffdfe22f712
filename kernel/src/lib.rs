//! dsbox-kernel: persistent Python kernels in sandboxes, started in milliseconds, and the
//! Rust side that talks to them.
//!
//! A kernel is a small Python program ([`KERNEL_PY`], embedded in the binary) that keeps
//! one namespace across cells and talks to the runtime over its own socket, never over
//! stdin/stdout, with length-prefixed JSON frames ([`protocol`]). Cells return ordered,
//! Jupyter-shaped items ([`OutputItem`]) capped per cell so the runtime's memory stays
//! bounded ([`output`]).
//!
//! Sandboxed kernels come from a *zygote*: a Python process in a sandbox of its own that
//! imported the template's modules (pandas + numpy by default) once and forks a child per
//! kernel; the child joins a fresh `dsbox-runtime` shell sandbox (its cgroup, namespaces,
//! landlock, seccomp, identity) before it runs any cell. docs/kernel.md has the details.
//!
//! Main types:
//! * [`KernelManager`] — caps shared by every template (live sandboxes, memory).
//! * [`Template`] — one zygote ([`supervisor`], restarted when it dies) and a warm pool
//!   of ready kernels ([`pool`]); [`Template::acquire`] hands out a [`SandboxKernel`].
//! * [`SandboxKernel`] — `execute`, `upload`/`download` in the scratch dirs ([`files`]),
//!   `close`; a lost kernel is replaced in the same sandbox.
//! * [`KernelClient`] — async (tokio) client of one kernel over a `UnixStream`.
//! * [`StandaloneKernel`] — a kernel as a plain child process (tests, trusted fallback;
//!   **unsafe for untrusted code**: no sandbox).
//! * [`zygote`] — the zygote's Python side ([`ZYGOTE_PY`]), its messages and control
//!   channel.
//!
//! ```no_run
//! use std::time::Duration;
//! use dsbox_kernel::{AcquireOptions, DataMount, KernelManager, ManagerConfig, TemplateConfig};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = dsbox_rootfs::Store::locate(None);
//! let rootfs = dsbox_rootfs::ensure("analysis", &dsbox_rootfs::EnsureOptions::new(store),
//!                                   &dsbox_rootfs::Progress::hidden())?;
//! let manager = KernelManager::new(ManagerConfig::default());
//! let mut config = TemplateConfig::new(&rootfs); // preload: the profile's (pandas, numpy)
//! config.pool_size = 4;
//! let template = manager.template(config)?;
//! let mut sandbox = template
//!     .acquire(AcquireOptions {
//!         data: vec![DataMount::new("/srv/task/train.csv", "/data/train.csv")],
//!         ..AcquireOptions::default()
//!     })
//!     .await?;
//! sandbox.execute("import pandas as pd; df = pd.read_csv('/data/train.csv')", Duration::from_secs(30)).await?;
//! let cell = sandbox.execute("len(df)", Duration::from_secs(30)).await?;
//! println!("{:?}", cell.result_text());
//! sandbox.close().await?;
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
