//! `dsbox serve`: the HTTP service — DSGym's manager API (unchanged for its clients), an
//! environment API for RL trainers and a direct sandbox API (see docs/serve.md).
//!
//! Prints `dsbox serve: listening on http://ADDR` on stdout once the templates' zygotes
//! are up, then serves until SIGINT or SIGTERM, when it destroys every sandbox and exits
//! 0. Exit 1 when it cannot start (a rootfs, the port, the token variable), 2 on usage
//! errors.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use dsbox_agent::model::{OpenAiConfig, OpenAiModel};
use dsbox_kernel::{ManagerConfig, TemplateConfig};
use dsbox_runtime::spec::{parse_cpus, parse_duration, parse_size};
use dsbox_serve::{App, SandboxCaps, ServeConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (use 0.0.0.0 to accept other machines; set --token-env then).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Container types: rootfs names or profiles, comma-separated; the first is the
    /// default of /allocate (built on first use unless --no-build).
    #[arg(long = "template", value_name = "LIST", value_delimiter = ',', default_value = dsbox_rootfs::DEFAULT_PROFILE)]
    pub templates: Vec<String>,
    /// Fail instead of building a rootfs that is not in the store yet.
    #[arg(long)]
    pub no_build: bool,
    /// The rootfs store [default: $DSBOX_STORE or ~/.local/share/dsbox/rootfs].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Modules the zygotes import before forking, comma-separated [default: each
    /// rootfs profile's list, e.g. pandas,numpy].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub preload: Option<Vec<String>>,
    /// Live sandboxes at most (held by clients and ready in pools); more → 503 (manager
    /// API) or 429 (v1 APIs) with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_sandboxes: usize,
    /// Memory of all sandboxes at which new ones are refused [default: 85% of RAM].
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// How long an allocation waits for room before it is refused.
    #[arg(long, value_name = "DURATION", default_value = "500ms")]
    pub acquire_wait: String,
    /// Ready kernels kept per template.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub pool_size: usize,
    /// Memory limit of each sandbox.
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    pub memory: String,
    /// Process limit of each sandbox.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub pids: u64,
    /// CPU quota of each sandbox in cores (e.g. 0.5) [default: none].
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<String>,
    /// The DSGym release root (task/, data/): the manager API's sandboxes see its data
    /// tree read-only at /data; the sandbox API mounts files from it; the env API finds
    /// the DSGym suites there [default for suites: $DSBOX_DATA_ROOT or
    /// ~/.local/share/dsbox/dsgym].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Extra suite entries (*.toml) for the env API.
    #[arg(long, value_name = "DIR")]
    pub suites_dir: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` (all routes but /health), the token read
    /// from this environment variable.
    #[arg(long, value_name = "NAME")]
    pub token_env: Option<String>,
    /// Cell timeout when a request names none (DSGym's: 180 s).
    #[arg(long, value_name = "DURATION", default_value = "180s")]
    pub exec_timeout: String,
    /// Largest cell timeout a request may ask for.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub max_exec_timeout: String,
    /// Sandboxes and envs unused this long are destroyed (0: never).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub idle_timeout: String,
    /// Largest JSON request body.
    #[arg(long, value_name = "SIZE", default_value = "16M")]
    pub max_body: String,
    /// Largest file upload (and download) of the sandbox API.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub max_upload: String,
    /// An OpenAI-compatible server that judges LLM-judge metrics (DiscoveryBench) in
    /// the env API; without one those rewards are null with a note.
    #[arg(long, value_name = "URL", requires = "judge_model")]
    pub judge_base_url: Option<String>,
    /// The judge model's name.
    #[arg(long, value_name = "MODEL", requires = "judge_base_url")]
    pub judge_model: Option<String>,
    /// The variable holding the judge server's API key.
    #[arg(long, value_name = "NAME", default_value = "OPENAI_API_KEY")]
    pub judge_api_key_env: String,
    /// Print the OpenAPI document and exit (no sandbox is started).
    #[arg(long)]
    pub print_openapi: bool,
}

fn size(flag: &str, v: &str) -> anyhow::Result<u64> {
    parse_size(v).with_context(|| format!("{flag} {v}"))
}

fn duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    parse_duration(v).with_context(|| format!("{flag} {v}"))
}

/// Check the flags, resolve the rootfs of every template (building on first use).
fn config(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    ensure!(
        args.max_sandboxes >= 1,
        "--max-sandboxes must be at least 1"
    );
    ensure!(
        args.pids >= 16,
        "--pids must be at least 16 (got {})",
        args.pids
    );
    ensure!(
        !args.templates.is_empty(),
        "--template needs at least one name"
    );
    let memory = size("--memory", &args.memory)?;
    let cpus = args.cpus.as_deref().map(parse_cpus).transpose()?;
    let exec_timeout = duration("--exec-timeout", &args.exec_timeout)?;
    let max_exec_timeout = duration("--max-exec-timeout", &args.max_exec_timeout)?;
    ensure!(
        exec_timeout <= max_exec_timeout,
        "--exec-timeout ({}) is longer than --max-exec-timeout ({})",
        args.exec_timeout,
        args.max_exec_timeout
    );
    let idle = duration("--idle-timeout", &args.idle_timeout)?;
    let acquire_wait = duration("--acquire-wait", &args.acquire_wait)?;
    let max_body = size("--max-body", &args.max_body)?;
    let max_upload = size("--max-upload", &args.max_upload)?;
    if let Some(root) = &args.data_root {
        ensure!(
            root.is_dir(),
            "--data-root {}: not a directory (give the DSGym release root holding data/, or any directory to show at /data)",
            root.display()
        );
    }
    let token = match &args.token_env {
        None => None,
        Some(name) => match std::env::var(name) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => bail!(
                "--token-env {name}: the variable ${name} is not set (or empty): export {name}=<a secret> first"
            ),
        },
    };
    let mut templates = Vec::new();
    for name in &args.templates {
        let name = name.trim();
        ensure!(!name.is_empty(), "--template: an empty name in the list");
        let rootfs = super::rootfs::ensure_rootfs(name, args.store.as_deref(), args.no_build)?;
        let mut tc = TemplateConfig::new(&rootfs);
        if let Some(preload) = &args.preload {
            tc.preload = preload
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
        }
        tc.pool_size = args.pool_size.min(args.max_sandboxes);
        tc.limits.memory = Some(memory);
        tc.limits.pids = Some(args.pids);
        tc.limits.cpus = cpus;
        templates.push((name.to_owned(), tc));
    }
    let mut manager = ManagerConfig {
        max_sandboxes: args.max_sandboxes,
        acquire_timeout: acquire_wait,
        ..ManagerConfig::default()
    };
    if let Some(m) = &args.max_memory {
        manager.max_memory = Some(size("--max-memory", m)?);
    }
    let mut cfg = ServeConfig::new(templates);
    cfg.manager = manager;
    cfg.data_root = args.data_root.clone();
    cfg.suites_dir = args.suites_dir.clone();
    cfg.token = token;
    cfg.max_body = usize::try_from(max_body).unwrap_or(usize::MAX);
    cfg.max_upload = usize::try_from(max_upload).unwrap_or(usize::MAX);
    cfg.max_download = max_upload;
    cfg.exec_timeout = exec_timeout;
    cfg.max_exec_timeout = max_exec_timeout;
    cfg.idle_timeout = (!idle.is_zero()).then_some(idle);
    cfg.caps = SandboxCaps {
        memory: memory.max(SandboxCaps::default().memory),
        ..SandboxCaps::default()
    };
    if let (Some(url), Some(model)) = (&args.judge_base_url, &args.judge_model) {
        let mut jc = OpenAiConfig::new(url, model).with_key_from_env(&args.judge_api_key_env);
        jc.temperature = Some(0.0);
        let judge = OpenAiModel::new(jc).context("the judge (--judge-base-url)")?;
        cfg.judge = Some(Arc::new(judge));
        cfg.judge_name = Some(format!("{model} at {url}"));
    }
    Ok(cfg)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.print_openapi {
        let doc = dsbox_serve::openapi()
            .to_pretty_json()
            .context("rendering the OpenAPI document")?;
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(&args)?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|()| {
            anyhow::anyhow!("--host {}: not an address or a known host name", args.host)
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}: is another server using the port? (--port 0 picks a free one)"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() && cfg.token.is_none() {
            eprintln!(
                "dsbox serve: warning: listening on {local} without --token-env: anyone who can reach this port can run code in its sandboxes"
            );
        }
        let app = App::start(cfg)?;
        for (name, t) in app.all_templates() {
            if let Err(e) = t.wait_ready().await {
                app.shutdown().await;
                bail!("template `{name}`: {e}");
            }
        }
        let types = app.type_names().join(", ");
        println!(
            "dsbox serve: listening on http://{local} (container types: {types}; at most {} sandboxes{})",
            app.config.manager.max_sandboxes,
            if app.config.token.is_some() { "; bearer token required" } else { "" }
        );
        let _ = std::io::stdout().flush();
        dsbox_serve::serve(listener, app, shutdown_signal())
            .await
            .context("serving")?;
        eprintln!("dsbox serve: stopped; every sandbox was destroyed");
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
