//! A kernel run as a plain child process, without a sandbox.
//!
//! **Not for untrusted code.** The kernel runs with the caller's uid, environment,
//! filesystem and network. It exists for tests, for development, and as a fallback where
//! sandboxes are unavailable and the code is trusted. Sandboxed kernels come from the
//! zygote (see docs/kernel.md).
//!
//! The embedded kernel program is sent over the channel itself as the first frame and
//! run by a few lines given to `python -c`, so nothing is written to disk.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::KERNEL_PY;
use crate::client::{
    CellResult, CellStatus, ClientConfig, KernelClient, KernelControl, KernelError, LostReason,
    Result,
};

/// Read the program (one length-prefixed frame) from the channel, run it as the module
/// `dsbox_kernel`, and hand the channel to its `main()`.
pub const BOOTSTRAP: &str = r#"import os, sys, types
fd = int(sys.argv[2])
def read(n):
    b = bytearray()
    while len(b) < n:
        c = os.read(fd, min(n - len(b), 1 << 20))
        if not c:
            sys.exit("dsbox kernel bootstrap: channel closed before the program arrived")
        b += c
    return bytes(b)
src = read(int.from_bytes(read(4), "big"))
m = types.ModuleType("dsbox_kernel")
m.__file__ = "<dsbox_kernel>"
sys.modules["dsbox_kernel"] = m
exec(compile(src, "<dsbox_kernel>", "exec"), m.__dict__)
del read, src
sys.exit(m.main(sys.argv[1:]))
"#;

/// How to start a standalone kernel.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// The Python interpreter (a venv's `bin/python` works).
    pub python: PathBuf,
    /// Working directory of the kernel (default: the caller's).
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Client settings (caps, grace period, hello timeout).
    pub client: ClientConfig,
}

impl StandaloneConfig {
    pub fn new(python: impl Into<PathBuf>) -> StandaloneConfig {
        StandaloneConfig {
            python: python.into(),
            cwd: None,
            env: Vec::new(),
            client: ClientConfig::default(),
        }
    }
}

/// Interrupts a child process by pid. Sound against pid reuse because the child is
/// not reaped while its [`StandaloneKernel`] holds it.
struct SigintChild(nix::unistd::Pid);

impl KernelControl for SigintChild {
    fn interrupt(&self) -> std::io::Result<()> {
        nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGINT)
            .map_err(std::io::Error::from)
    }
}

/// A kernel in a child process, restarted when it is lost.
#[derive(Debug)]
pub struct StandaloneKernel {
    config: StandaloneConfig,
    child: Child,
    client: Option<KernelClient>,
    restarts: u64,
}

impl StandaloneKernel {
    /// Start a kernel and wait for its hello.
    pub async fn start(config: StandaloneConfig) -> Result<StandaloneKernel> {
        let (child, client) = spawn(&config).await?;
        Ok(StandaloneKernel {
            config,
            child,
            client: Some(client),
            restarts: 0,
        })
    }

    /// The kernel process's pid (changes on restart).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How many times the kernel was restarted after being lost.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Run one cell. A kernel lost during the cell (timeout without response, crash,
    /// protocol violation) is killed and restarted before this returns, as the result's
    /// error item says.
    pub async fn execute(&mut self, code: &str, timeout: Duration) -> Result<CellResult> {
        if self.client.is_none() {
            self.restart().await?;
        }
        let client = self.client.as_mut().ok_or(KernelError::Lost {
            reason: LostReason::Exited,
        })?;
        let mut result = client.execute(code, timeout).await?;
        if let CellStatus::KernelLost(reason) = &result.status {
            let reason = reason.clone();
            let status = self.kill_and_reap().await;
            if reason == LostReason::Exited {
                result.set_exit_detail(&describe_exit(status));
            }
            if let Err(e) = self.restart().await {
                tracing::warn!(error = %e, "could not restart the kernel; will retry on the next cell");
            }
        }
        Ok(result)
    }

    /// Kill the current kernel (if any) and start a new one: all state is lost.
    pub async fn restart(&mut self) -> Result<()> {
        self.client = None;
        self.kill_and_reap().await;
        let (child, client) = spawn(&self.config).await?;
        self.child = child;
        self.client = Some(client);
        self.restarts += 1;
        Ok(())
    }

    /// Wait for the process to end (it is ending: its channel closed), killing it if it
    /// lingers.
    async fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await
        {
            return Some(status);
        }
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }

    /// Ask the kernel to exit, then reap it (killing it after 2 s).
    pub async fn shutdown(mut self) -> Result<ExitStatus> {
        if let Some(client) = self.client.as_mut() {
            let _ = client.shutdown().await;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

/// "exited with code 1", "killed by signal 11 (SIGSEGV)".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        None => "its exit status is unknown".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("the process exited with code {code}"),
            (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(name) => format!("the process was killed by signal {sig} ({name})"),
                Err(_) => format!("the process was killed by signal {sig}"),
            },
            _ => format!("the process ended with status {s}"),
        },
    }
}

async fn spawn(config: &StandaloneConfig) -> Result<(Child, KernelClient)> {
    let io = |e| KernelError::Io(e);
    let (parent, child_end) = std::os::unix::net::UnixStream::pair().map_err(io)?;
    let child_fd = child_end.as_raw_fd();
    let mut cmd = Command::new(&config.python);
    cmd.arg("-c")
        .arg(BOOTSTRAP)
        .arg("--channel-fd")
        .arg(child_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
    // which is async-signal-safe. The channel fd is CLOEXEC in this process (so kernels
    // spawned concurrently never inherit each other's channels); only this child keeps it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| KernelError::Spawn {
        python: config.python.clone(),
        source,
    })?;
    drop(child_end);
    let pid = child.id().ok_or_else(|| KernelError::StartFailed {
        python: config.python.clone(),
        reason: "the process exited at once".to_owned(),
        stderr: String::new(),
    })?;
    parent.set_nonblocking(true).map_err(io)?;
    let mut stream = UnixStream::from_std(parent).map_err(io)?;

    let mut program = (KERNEL_PY.len() as u32).to_be_bytes().to_vec();
    program.extend_from_slice(KERNEL_PY.as_bytes());
    let control = Arc::new(SigintChild(nix::unistd::Pid::from_raw(pid as i32)));
    let connected = match stream.write_all(&program).await {
        Ok(()) => KernelClient::connect(stream, control, config.client.clone()).await,
        Err(e) => Err(KernelError::Io(e)),
    };
    match connected {
        Ok(client) => {
            // The kernel moved its fd 2 onto a pipe of its own: nothing more comes here.
            drop(child.stderr.take());
            Ok((child, client))
        }
        Err(e) => {
            let _ = child.start_kill();
            let status = child.wait().await.ok();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let mut buf = Vec::new();
                let mut limited = (&mut pipe).take(16 << 10);
                let read = limited.read_to_end(&mut buf);
                let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
                stderr = String::from_utf8_lossy(&buf).trim().to_owned();
            }
            Err(KernelError::StartFailed {
                python: config.python.clone(),
                reason: format!("{e} ({})", describe_exit(status)),
                stderr,
            })
        }
    }
}
