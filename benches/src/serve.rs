//! `dsbox bench serve`: the HTTP service under load, and P4 of targets.md beside P3.
//!
//! * **Server**: `dsbox serve` as a child process (so its memory is its own) on a free
//!   loopback port, one template, `--max-sandboxes` = clients + pool.
//! * **P3** (baseline, this process): `1+1` round trips through
//!   [`dsbox_kernel::SandboxKernel::execute`] on a sandboxed kernel of the same rootfs.
//! * **P4**: the same `1+1` through the manager API (`POST /session/{id}/execute`, one
//!   keep-alive connection), sequentially.
//! * **Load**: N concurrent clients, each allocates a container, runs M `1+1` cells
//!   (checking every answer), deallocates: errors, latency p50/p99 of the executes and of
//!   the allocations, throughput, and the server's peak RSS (VmHWM; the kernels are
//!   processes of their own, not counted there).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dsbox_kernel::{AcquireOptions, KernelManager, ManagerConfig, TemplateConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::start::{Machine, Stats};

/// Errors of the serve benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    #[error("cannot start the server ({exe}): {detail}")]
    Server { exe: PathBuf, detail: String },
    #[error(transparent)]
    Sandbox(#[from] dsbox_kernel::SandboxError),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{what} gave {got} instead of `2`")]
    WrongAnswer { what: &'static str, got: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = ServeBenchError> = std::result::Result<T, E>;

/// What to run.
#[derive(Debug, Clone)]
pub struct ServeBenchConfig {
    /// The `dsbox` binary (serves as the child process).
    pub exe: PathBuf,
    /// Arguments that make `dsbox serve` find the rootfs (`--template NAME --store DIR
    /// --no-build`).
    pub rootfs_args: Vec<String>,
    /// Concurrent clients of the load test.
    pub clients: usize,
    /// Executes per client.
    pub executes: usize,
    /// Sequential round trips of P3 and of P4.
    pub roundtrips: usize,
    /// Warm pool of the server's template.
    pub pool_size: usize,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub description: String,
    pub met: bool,
}

/// The load test's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub clients: usize,
    pub executes_per_client: usize,
    pub executes: usize,
    pub errors: usize,
    /// The first few errors, verbatim.
    pub error_samples: Vec<String>,
    pub wall_s: f64,
    pub executes_per_s: f64,
    pub execute_latency: Stats,
    pub allocate_latency: Stats,
}

/// The benchmark's output.
#[derive(Debug, Clone, Serialize)]
pub struct ServeBenchResult {
    pub machine: Machine,
    pub template: String,
    /// `1+1` through the kernel client, in this process (baseline).
    pub p3_kernel_client: Stats,
    /// `1+1` through the HTTP manager API, one client.
    pub p4_http: Stats,
    /// p50(P4) / p50(P3).
    pub p4_over_p3: f64,
    pub p4_target: Target,
    pub load: Load,
    /// Peak resident memory of the `dsbox serve` process (bytes).
    pub server_peak_rss_bytes: u64,
    /// Its resident memory at the end, all clients gone (bytes).
    pub server_rss_end_bytes: u64,
}

impl ServeBenchResult {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let m = &self.machine;
        let l = &self.load;
        let mut s = format!(
            "machine: {} cores ({}), Linux {}, cgroup {}\ntemplate: {}\n\n",
            m.cores, m.cpu_model, m.kernel, m.cgroup_mode, self.template
        );
        s += &format!(
            "P3 `1+1` kernel client (baseline)   p50 {:.3} ms  p99 {:.3} ms  (n={})\n",
            self.p3_kernel_client.p50_ms, self.p3_kernel_client.p99_ms, self.p3_kernel_client.n
        );
        s += &format!(
            "P4 `1+1` over HTTP (manager API)    p50 {:.3} ms  p99 {:.3} ms  (n={})\n",
            self.p4_http.p50_ms, self.p4_http.p99_ms, self.p4_http.n
        );
        s += &format!(
            "P4 / P3 (p50): {:.1}x; target p50 <= 2 ms: {}\n\n",
            self.p4_over_p3,
            if self.p4_target.met { "met" } else { "NOT met" }
        );
        s += &format!(
            "load: {} clients x {} executes = {} executes in {:.2} s ({:.0}/s), errors: {}\n",
            l.clients, l.executes_per_client, l.executes, l.wall_s, l.executes_per_s, l.errors
        );
        s += &format!(
            "  execute latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            l.execute_latency.p50_ms, l.execute_latency.p99_ms, l.execute_latency.max_ms
        );
        s += &format!(
            "  allocate latency p50 {:.2} ms  p99 {:.2} ms\n",
            l.allocate_latency.p50_ms, l.allocate_latency.p99_ms
        );
        s += &format!(
            "server peak RSS {:.1} MiB (at the end {:.1} MiB; kernels are separate processes)\n",
            self.server_peak_rss_bytes as f64 / 1048576.0,
            self.server_rss_end_bytes as f64 / 1048576.0
        );
        for e in &l.error_samples {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

/// The `dsbox serve` child; killed (SIGTERM, then SIGKILL) when dropped.
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    fn start(cfg: &ServeBenchConfig) -> Result<ServerProcess> {
        let bad = |detail: String| ServeBenchError::Server {
            exe: cfg.exe.clone(),
            detail,
        };
        let mut child = Command::new(&cfg.exe)
            .arg("serve")
            .args(&cfg.rootfs_args)
            .args([
                "--port",
                "0",
                "--idle-timeout",
                "0",
                "--max-sandboxes",
                &(cfg.clients + cfg.pool_size + 8).to_string(),
                "--pool-size",
                &cfg.pool_size.to_string(),
                "--acquire-wait",
                "30s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| bad(e.to_string()))?;
        let stdout = child.stdout.take().ok_or_else(|| bad("no stdout".into()))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned);
        match url {
            Some(url) => Ok(ServerProcess { child, url }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(bad(format!("it did not say where it listens: {line:?}")))
            }
        }
    }

    /// (VmHWM, VmRSS) in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..600 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_err(e: impl std::fmt::Display) -> ServeBenchError {
    ServeBenchError::Http(e.to_string())
}

async fn post(http: &reqwest::Client, url: String, body: Option<Value>) -> Result<Value> {
    let mut req = http.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.map_err(http_err)?;
    let status = r.status();
    let v: Value = r.json().await.map_err(http_err)?;
    if !status.is_success() {
        return Err(ServeBenchError::Http(format!("HTTP {status}: {v}")));
    }
    Ok(v)
}

fn is_two(outputs: &Value) -> bool {
    outputs["outputs"][0]["data"]["text/plain"] == "2"
}

/// Run it (needs root: sandboxes). `template` is the P3 baseline's template (the same
/// rootfs the server is given through `rootfs_args`).
pub fn run(template: TemplateConfig, cfg: &ServeBenchConfig) -> Result<ServeBenchResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let template_name = template.name();
    // P3: the kernel client in this process.
    let p3 = rt.block_on(async {
        let manager = KernelManager::new(ManagerConfig::default());
        let mut t = template.clone();
        t.pool_size = 0;
        let t = manager.template(t)?;
        t.wait_ready().await?;
        let mut sb = t.acquire(AcquireOptions::default()).await?;
        let mut ms = Vec::with_capacity(cfg.roundtrips);
        for i in 0..cfg.roundtrips + 50 {
            let start = Instant::now();
            let cell = sb.execute("1+1", Duration::from_secs(10)).await?;
            let took = start.elapsed();
            if cell.result_text() != Some("2") {
                return Err(ServeBenchError::WrongAnswer {
                    what: "P3",
                    got: format!("{:?}", cell.items),
                });
            }
            if i >= 50 {
                ms.push(took.as_secs_f64() * 1e3);
            }
        }
        sb.close().await?;
        Ok::<_, ServeBenchError>(Stats::from_ms(ms))
    })?;

    let server = ServerProcess::start(cfg)?;
    let url = server.url.clone();
    let (p4, load) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.clients + 16)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(http_err)?;
        // P4: one client, sequential.
        let id = post(&http, format!("{url}/allocate"), None).await?["container_id"].clone();
        let exec_url = format!("{url}/session/{id}/execute");
        let mut ms = Vec::with_capacity(cfg.roundtrips);
        for i in 0..cfg.roundtrips + 50 {
            let start = Instant::now();
            let v = post(&http, exec_url.clone(), Some(json!({"code": "1+1"}))).await?;
            let took = start.elapsed();
            if !is_two(&v) {
                return Err(ServeBenchError::WrongAnswer {
                    what: "P4",
                    got: v.to_string(),
                });
            }
            if i >= 50 {
                ms.push(took.as_secs_f64() * 1e3);
            }
        }
        post(&http, format!("{url}/deallocate/{id}"), None).await?;
        let p4 = Stats::from_ms(ms);

        // Load: N clients at once.
        let errors = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..cfg.clients {
            let http = http.clone();
            let url = url.clone();
            let errors = errors.clone();
            let samples = samples.clone();
            let n = cfg.executes;
            tasks.push(tokio::spawn(async move {
                let fail = |e: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < 5 {
                        s.push(e);
                    }
                };
                let mut lat = Vec::with_capacity(n);
                let t = Instant::now();
                let id = match post(&http, format!("{url}/allocate"), None).await {
                    Ok(v) => v["container_id"].clone(),
                    Err(e) => {
                        for _ in 0..n {
                            fail(format!("allocate: {e}"));
                        }
                        return (None, lat);
                    }
                };
                let alloc_ms = t.elapsed().as_secs_f64() * 1e3;
                let exec_url = format!("{url}/session/{id}/execute");
                for _ in 0..n {
                    let t = Instant::now();
                    match post(&http, exec_url.clone(), Some(json!({"code": "1+1"}))).await {
                        Ok(v) if is_two(&v) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Ok(v) => fail(format!("wrong answer: {v}")),
                        Err(e) => fail(format!("execute: {e}")),
                    }
                }
                if let Err(e) = post(&http, format!("{url}/deallocate/{id}"), None).await {
                    fail(format!("deallocate: {e}"));
                }
                (Some(alloc_ms), lat)
            }));
        }
        let mut lat = Vec::new();
        let mut alloc = Vec::new();
        for t in tasks {
            let (a, l) = t.await.map_err(http_err)?;
            alloc.extend(a);
            lat.extend(l);
        }
        let wall = started.elapsed().as_secs_f64();
        let executes = cfg.clients * cfg.executes;
        let load = Load {
            clients: cfg.clients,
            executes_per_client: cfg.executes,
            executes,
            errors: errors.load(Ordering::Relaxed),
            error_samples: samples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            wall_s: wall,
            executes_per_s: executes as f64 / wall,
            execute_latency: Stats::from_ms(lat),
            allocate_latency: Stats::from_ms(alloc),
        };
        Ok::<_, ServeBenchError>((p4, load))
    })?;
    let (peak, end) = server.memory();
    drop(server);
    let ratio = if p3.p50_ms > 0.0 {
        p4.p50_ms / p3.p50_ms
    } else {
        0.0
    };
    Ok(ServeBenchResult {
        machine: Machine::detect(),
        template: template_name,
        p4_target: Target {
            description: "P4: `1+1` through the HTTP service, p50 <= 2 ms".into(),
            met: p4.p50_ms <= 2.0,
        },
        p3_kernel_client: p3,
        p4_over_p3: ratio,
        p4_http: p4,
        load,
        server_peak_rss_bytes: peak,
        server_rss_end_bytes: end,
    })
}
