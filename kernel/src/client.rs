//! The async client of one kernel: execute cells over the kernel's channel.
//!
//! [`KernelClient::execute`] sends one cell and collects its items until `done`. On the
//! cell's timeout it asks the kernel's owner to interrupt it ([`KernelControl`]: SIGINT
//! to the kernel's pid), waits [`ClientConfig::interrupt_grace`], and if the kernel is
//! still not back it gives up on the kernel: the result then says the kernel must be
//! restarted ([`CellResult::needs_restart`]) and carries a `TimeoutError` item, as
//! DSGym's manager does. The owner (a [`crate::StandaloneKernel`], later the sandbox
//! pool) kills and restarts it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::output::{OutputCaps, OutputCollector, OutputItem, Truncation};
use crate::protocol::{
    DoneStatus, FrameReader, HelloTiming, KernelMessage, MAX_KERNEL_FRAME, PROTOCOL_VERSION,
    ProtocolError, Request, StreamName, encode_request,
};

/// What the owner of a kernel process does for the client.
pub trait KernelControl: Send + Sync {
    /// Deliver SIGINT to the kernel process.
    fn interrupt(&self) -> std::io::Result<()>;
}

/// Settings of a [`KernelClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// What a cell's output may hold.
    pub caps: OutputCaps,
    /// How long a kernel has to come back after an interrupt before it is given up.
    pub interrupt_grace: Duration,
    /// How long a new kernel has to say hello.
    pub hello_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            caps: OutputCaps::default(),
            interrupt_grace: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a kernel can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Timed out and did not come back after an interrupt.
    Unresponsive,
    /// The channel closed: the process exited or was killed (segfault, `os._exit`, OOM).
    Exited,
    /// The kernel broke the protocol (oversized frame, invalid message).
    Protocol(String),
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Unresponsive => f.write_str("it did not respond to an interrupt"),
            LostReason::Exited => f.write_str("its process exited"),
            LostReason::Protocol(e) => write!(f, "it broke the protocol: {e}"),
        }
    }
}

/// How a cell ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Ok,
    /// The cell raised an exception (an `error` item says which).
    Error,
    /// Interrupted by a SIGINT that did not come from this client's timeout.
    Interrupted,
    /// Timed out, interrupted, and the kernel came back: its state is kept.
    TimedOut,
    /// The kernel is gone or unusable; the owner must restart it.
    KernelLost(LostReason),
}

/// Where a cell's time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CellTimings {
    /// Measured by the client: request sent to result complete.
    pub total: Duration,
    /// Reported by the kernel (request parsed to `done`), if it finished the cell.
    pub kernel_run: Option<Duration>,
}

/// The outcome of one cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellResult {
    pub id: u64,
    pub items: Vec<OutputItem>,
    pub status: CellStatus,
    pub execution_count: Option<u64>,
    pub timings: CellTimings,
    pub truncation: Truncation,
}

/// Name of the error item for a kernel that died during a cell (as nbclient names it).
pub const DEAD_KERNEL_ERROR: &str = "DeadKernelError";

impl CellResult {
    /// Whether the kernel must be killed and restarted before the next cell.
    pub fn needs_restart(&self) -> bool {
        matches!(self.status, CellStatus::KernelLost(_))
    }

    /// All text written to one stream, in order.
    pub fn stream_text(&self, stream: StreamName) -> String {
        self.items
            .iter()
            .filter_map(|i| match i {
                OutputItem::Stream { name, text } if *name == stream => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.stream_text(StreamName::Stdout)
    }

    pub fn stderr(&self) -> String {
        self.stream_text(StreamName::Stderr)
    }

    /// The `text/plain` of the last expression's value.
    pub fn result_text(&self) -> Option<&str> {
        self.items.iter().find_map(|i| match i {
            OutputItem::Result { .. } => i.text_plain(),
            _ => None,
        })
    }

    /// The first error item: (name, value, traceback).
    pub fn error(&self) -> Option<(&str, &str, &[String])> {
        self.items.iter().find_map(|i| match i {
            OutputItem::Error {
                name,
                value,
                traceback,
            } => Some((name.as_str(), value.as_str(), traceback.as_slice())),
            _ => None,
        })
    }

    /// Add how the kernel process ended (known to its owner) to the `DeadKernelError` item.
    pub fn set_exit_detail(&mut self, detail: &str) {
        for item in &mut self.items {
            if let OutputItem::Error {
                name,
                value,
                traceback,
            } = item
                && name == DEAD_KERNEL_ERROR
            {
                *value = format!("The kernel died during the cell ({detail}); {RESTARTED}");
                *traceback = vec![format!("{name}: {value}")];
            }
        }
    }
}

const RESTARTED: &str = "it was restarted and all variables are lost";

/// Errors of the kernel client and of starting kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the kernel did not say hello within {timeout:?}: it may be stuck importing modules")]
    HelloTimeout { timeout: Duration },
    #[error("the kernel closed its channel before saying hello")]
    ClosedBeforeHello,
    #[error(
        "the kernel could not join its sandbox at step `{step}`: {} (errno {errno}){}",
        errno_text(*errno),
        if detail.is_empty() { String::new() } else { format!(": {detail}") }
    )]
    JoinFailed {
        step: String,
        errno: i32,
        detail: String,
    },
    #[error(
        "the kernel speaks protocol {got}, this runtime speaks {PROTOCOL_VERSION}: use the kernel program embedded in this build"
    )]
    ProtocolVersion { got: u32 },
    #[error("the kernel sent `{kind}` before hello")]
    UnexpectedBeforeHello { kind: &'static str },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("I/O on the kernel channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the kernel was lost in an earlier cell ({reason}); restart it before running more code"
    )]
    Lost { reason: LostReason },
    #[error("could not start the kernel with {}: {source}; check that this Python exists", python.display())]
    Spawn {
        python: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel ({}) failed to start: {reason}{}", python.display(), if stderr.is_empty() { String::new() } else { format!("; its stderr: {stderr}") })]
    StartFailed {
        python: std::path::PathBuf,
        reason: String,
        stderr: String,
    },
}

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_owned()
}

/// Result alias of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// The kernel's hello: who answered on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The pid the kernel sees for itself (namespace-relative in a sandbox; untrusted).
    pub pid: u32,
    /// The kernel's Python version, e.g. "3.11.2".
    pub python: String,
    /// A zygote child's own timestamps (untrusted; for measurements).
    pub timing: Option<HelloTiming>,
    /// CLOCK_MONOTONIC when the runtime received the hello (ns).
    pub hello_received_ns: u64,
}

/// An async client of one kernel. One cell at a time (`&mut self`).
pub struct KernelClient {
    stream: UnixStream,
    reader: FrameReader,
    control: Arc<dyn KernelControl>,
    config: ClientConfig,
    next_id: u64,
    info: KernelInfo,
    lost: Option<LostReason>,
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("info", &self.info)
            .field("next_id", &self.next_id)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

enum Event {
    Message(Result<Option<KernelMessage>>),
    Deadline,
    GraceOver,
}

enum Outcome {
    Done {
        status: DoneStatus,
        execution_count: u64,
        run_us: u64,
    },
    Lost(LostReason),
}

impl KernelClient {
    /// Wait for the kernel's hello on `stream` and return a client ready for cells.
    pub async fn connect(
        stream: UnixStream,
        control: Arc<dyn KernelControl>,
        config: ClientConfig,
    ) -> Result<KernelClient> {
        let mut client = KernelClient {
            stream,
            reader: FrameReader::new(MAX_KERNEL_FRAME),
            control,
            config,
            next_id: 1,
            info: KernelInfo {
                pid: 0,
                python: String::new(),
                timing: None,
                hello_received_ns: 0,
            },
            lost: None,
        };
        let timeout = client.config.hello_timeout;
        let first = tokio::time::timeout(timeout, client.next_message())
            .await
            .map_err(|_| KernelError::HelloTimeout { timeout })??;
        match first {
            Some(KernelMessage::Hello {
                protocol,
                pid,
                python,
                timing,
            }) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(KernelError::ProtocolVersion { got: protocol });
                }
                client.info = KernelInfo {
                    pid,
                    python,
                    timing,
                    hello_received_ns: dsbox_runtime::process::message::monotonic_ns(),
                };
                Ok(client)
            }
            Some(KernelMessage::JoinError {
                step,
                errno,
                detail,
            }) => Err(KernelError::JoinFailed {
                step,
                errno,
                detail,
            }),
            Some(other) => Err(KernelError::UnexpectedBeforeHello { kind: other.kind() }),
            None => Err(KernelError::ClosedBeforeHello),
        }
    }

    /// What the kernel said in its hello.
    pub fn info(&self) -> &KernelInfo {
        &self.info
    }

    /// Why the kernel is unusable, if it is.
    pub fn lost(&self) -> Option<&LostReason> {
        self.lost.as_ref()
    }

    /// The next message, or None at end of stream. Cancel-safe: all state is in
    /// `self.reader`, and a read that did not complete consumed nothing.
    async fn next_message(&mut self) -> Result<Option<KernelMessage>> {
        loop {
            if let Some(body) = self.reader.next_frame()? {
                return Ok(Some(KernelMessage::parse(body)?));
            }
            let n = self.stream.read(self.reader.read_space()).await?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.advance(n);
        }
    }

    /// Run one cell. Returns `Err` only when the cell could not be sent at all (the
    /// kernel was lost before, or the code is too large); a kernel lost during the cell
    /// gives `Ok` with [`CellStatus::KernelLost`] and the items received so far.
    pub async fn execute(&mut self, code: &str, timeout: Duration) -> Result<CellResult> {
        self.run(|id| Request::Execute { id, code }, timeout).await
    }

    /// Run a throwaway cell that leaves no trace (see [`Request::Warmup`]), so that the
    /// first real cell of a freshly forked kernel is as fast as the later ones.
    pub async fn warm_up(&mut self, timeout: Duration) -> Result<CellResult> {
        self.run(|id| Request::Warmup { id }, timeout).await
    }

    async fn run<'a>(
        &mut self,
        request: impl FnOnce(u64) -> Request<'a>,
        timeout: Duration,
    ) -> Result<CellResult> {
        if let Some(reason) = &self.lost {
            return Err(KernelError::Lost {
                reason: reason.clone(),
            });
        }
        let id = self.next_id;
        let frame = encode_request(&request(id))?;
        self.next_id += 1;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let grace = self.config.interrupt_grace;
        let mut out = OutputCollector::new(self.config.caps);

        let sent = tokio::time::timeout_at(deadline, self.stream.write_all(&frame)).await;
        let mut interrupted = false;
        let outcome = match sent {
            Err(_) => Outcome::Lost(LostReason::Unresponsive),
            Ok(Err(_)) => Outcome::Lost(LostReason::Exited),
            Ok(Ok(())) => {
                let mut grace_end = None;
                loop {
                    let event = match grace_end {
                        None => tokio::select! {
                            m = self.next_message() => Event::Message(m),
                            _ = tokio::time::sleep_until(deadline) => Event::Deadline,
                        },
                        Some(end) => tokio::select! {
                            m = self.next_message() => Event::Message(m),
                            _ = tokio::time::sleep_until(end) => Event::GraceOver,
                        },
                    };
                    match event {
                        Event::Deadline => {
                            if let Err(e) = self.control.interrupt() {
                                tracing::warn!(error = %e, "could not interrupt the kernel");
                            }
                            interrupted = true;
                            grace_end = Some(tokio::time::Instant::now() + grace);
                        }
                        Event::GraceOver => break Outcome::Lost(LostReason::Unresponsive),
                        Event::Message(Ok(None)) => break Outcome::Lost(LostReason::Exited),
                        Event::Message(Err(KernelError::Protocol(e))) => {
                            tracing::warn!(error = %e, "kernel broke the protocol");
                            break Outcome::Lost(LostReason::Protocol(e.to_string()));
                        }
                        Event::Message(Err(e)) => {
                            tracing::warn!(error = %e, "kernel channel failed");
                            break Outcome::Lost(LostReason::Exited);
                        }
                        Event::Message(Ok(Some(msg))) => {
                            if let Some(outcome) = collect(id, msg, &mut out) {
                                break outcome;
                            }
                        }
                    }
                }
            }
        };

        let (status, execution_count, kernel_run) = match outcome {
            Outcome::Done {
                status,
                execution_count,
                run_us,
            } => {
                let status = match status {
                    DoneStatus::Ok => CellStatus::Ok,
                    DoneStatus::Error => CellStatus::Error,
                    DoneStatus::Interrupted if interrupted => {
                        timeout_error(&mut out, timeout);
                        CellStatus::TimedOut
                    }
                    DoneStatus::Interrupted => CellStatus::Interrupted,
                };
                (
                    status,
                    Some(execution_count),
                    Some(Duration::from_micros(run_us)),
                )
            }
            Outcome::Lost(reason) => {
                let (name, value) = match &reason {
                    LostReason::Unresponsive => (
                        "TimeoutError",
                        format!(
                            "Cell execution timed out after {} and the kernel did not stop within {} of an interrupt; {RESTARTED}",
                            secs(timeout),
                            secs(grace)
                        ),
                    ),
                    LostReason::Exited => (
                        DEAD_KERNEL_ERROR,
                        format!("The kernel died during the cell; {RESTARTED}"),
                    ),
                    LostReason::Protocol(e) => (
                        "KernelProtocolError",
                        format!("The kernel broke the runtime protocol ({e}); {RESTARTED}"),
                    ),
                };
                out.push_runtime_error(name, value);
                self.lost = Some(reason.clone());
                (CellStatus::KernelLost(reason), None, None)
            }
        };
        let (items, truncation) = out.finish();
        Ok(CellResult {
            id,
            items,
            status,
            execution_count,
            timings: CellTimings {
                total: started.elapsed(),
                kernel_run,
            },
            truncation,
        })
    }

    /// Ask the kernel to exit (best effort; the owner still reaps the process).
    pub async fn shutdown(&mut self) -> Result<()> {
        let frame = encode_request(&Request::Shutdown)?;
        self.stream.write_all(&frame).await?;
        self.lost = Some(LostReason::Exited);
        Ok(())
    }
}

/// Route one message of cell `id`; `Some` when the cell is over.
fn collect(id: u64, msg: KernelMessage, out: &mut OutputCollector) -> Option<Outcome> {
    match msg {
        // Items of an earlier cell (cut short) are dropped.
        KernelMessage::Stream { id: m, .. }
        | KernelMessage::Result { id: m, .. }
        | KernelMessage::DisplayData { id: m, .. }
        | KernelMessage::Error { id: m, .. }
        | KernelMessage::Done { id: m, .. }
            if m != id =>
        {
            None
        }
        KernelMessage::Stream { name, text, .. } => {
            out.push_stream(name, &text);
            None
        }
        KernelMessage::Result { data, .. } => {
            out.push_rich(OutputItem::Result { data });
            None
        }
        KernelMessage::DisplayData { data, .. } => {
            out.push_rich(OutputItem::DisplayData { data });
            None
        }
        KernelMessage::Error {
            name,
            value,
            traceback,
            ..
        } => {
            out.push_rich(OutputItem::Error {
                name,
                value,
                traceback,
            });
            None
        }
        KernelMessage::Done {
            status,
            execution_count,
            timing,
            ..
        } => Some(Outcome::Done {
            status,
            execution_count,
            run_us: timing.run_us,
        }),
        KernelMessage::Hello { .. } | KernelMessage::JoinError { .. } => Some(Outcome::Lost(
            LostReason::Protocol(format!("unexpected `{}` during a cell", msg.kind())),
        )),
    }
}

/// The kernel came back from the timeout's interrupt: report a TimeoutError that keeps
/// the KeyboardInterrupt's traceback (it shows where the cell was).
fn timeout_error(out: &mut OutputCollector, timeout: Duration) {
    let value = format!(
        "Cell execution timed out after {} and was interrupted; the kernel's state is kept",
        secs(timeout)
    );
    match out.last_error_mut() {
        Some(OutputItem::Error {
            name,
            value: v,
            traceback,
        }) if name == "KeyboardInterrupt" => {
            *name = "TimeoutError".to_owned();
            *v = value.clone();
            if let Some(last) = traceback.last_mut()
                && last.starts_with("KeyboardInterrupt")
            {
                *last = format!("TimeoutError: {value}");
            }
        }
        _ => out.push_runtime_error("TimeoutError", value),
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.3} s")
    }
}
