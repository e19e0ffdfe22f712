//! `dsbox run`: run a command in a sandbox.
//!
//! Exit codes: the command's own; 128+signal when it was killed (stderr says why: timeout,
//! out of memory, pids limit); 125 when dsbox itself fails; 126 when the command cannot
//! be executed; 127 when it is not found inside the sandbox.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dsbox_runtime::spec::{
    Mount, Network, ProcessSpec, Protection, Root, SandboxSpec, SeccompPolicy, parse_cpus,
    parse_duration, parse_env, parse_size,
};
use dsbox_runtime::{Sandbox, SpawnOptions};

/// Default memory limit when neither --mem nor an OCI bundle sets one.
const DEFAULT_MEM: &str = "1G";
/// Default task limit.
const DEFAULT_PIDS: u64 = 512;
/// Host variables passed through when set: harmless and useful for terminals and locales.
const PASSTHROUGH_ENV: &[&str] = &["TERM", "TZ", "LANG", "LC_ALL"];

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Root filesystem: `host` (read-only binds of the host's /usr, /bin, /lib*, /sbin and
    /// an /etc subset), a directory (a path with a `/`), or the name of a built rootfs or
    /// profile from the store (e.g. `analysis`; built on first use unless --no-build).
    #[arg(long, value_name = "host|DIR|NAME", default_value = "host")]
    rootfs: String,
    /// Fail instead of building a rootfs that is not in the store yet.
    #[arg(long)]
    no_build: bool,
    /// The rootfs store [default: $DSBOX_STORE or ~/.local/share/dsbox/rootfs].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Memory limit, e.g. 512M or 2G [default: 1G].
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// Maximum number of processes and threads [default: 512].
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU quota in cores, e.g. 1.0 or 0.5.
    #[arg(long, value_name = "CPUS")]
    cpus: Option<String>,
    /// Wall-clock timeout, e.g. 10s, 500ms, 2m; the sandbox is killed when it passes.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Network: `none` (own namespace, loopback only) or `host`.
    #[arg(long, value_name = "none|host", default_value = "none")]
    net: String,
    /// Bind a host path read-only (repeatable).
    #[arg(long, value_name = "SRC:DST")]
    ro: Vec<String>,
    /// Bind a host path read-write (repeatable).
    #[arg(long, value_name = "SRC:DST")]
    rw: Vec<String>,
    /// Size limit of each scratch tmpfs (/tmp, /workdir, /submission).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    scratch_size: String,
    /// Set an environment variable inside (repeatable). Nothing else from the host's
    /// environment gets in except TERM, TZ, LANG and LC_ALL.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Use a user namespace (always used when dsbox does not run as root).
    #[arg(long)]
    user_namespace: bool,
    /// Refuse to start unless these protections are available: seccomp, landlock, cgroup,
    /// userns (comma-separated).
    #[arg(long, value_name = "LIST")]
    require: Option<String>,
    /// Take the spec from an OCI bundle's config.json (CMD, if given, replaces its args).
    #[arg(long, value_name = "DIR")]
    oci_bundle: Option<PathBuf>,
    /// seccomp policy file (seccompiler JSON) instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    seccomp: Option<PathBuf>,
    /// Parent cgroup for the sandbox's cgroup (relative to each hierarchy's root).
    #[arg(long, value_name = "PATH", env = "DSBOX_CGROUP_PARENT")]
    cgroup_parent: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Where a `--rootfs` value becomes a root plus the binds it needs: `host`, a directory
/// (any value with a `/`, or an existing directory of that name), else a rootfs name or
/// profile resolved through the store (the env is bound at /opt/dsbox/env).
fn resolve_rootfs(args: &RunArgs) -> anyhow::Result<(Root, Vec<Mount>)> {
    let value = args.rootfs.as_str();
    if value == "host" {
        return Ok((Root::Host, Vec::new()));
    }
    let path = PathBuf::from(value);
    if value.contains('/') {
        anyhow::ensure!(
            path.is_dir(),
            "rootfs directory {} does not exist: pass an existing directory, `host`, or a rootfs name (see `dsbox rootfs list`)",
            path.display()
        );
        return Ok((Root::Dir(path), Vec::new()));
    }
    if path.is_dir() {
        return Ok((Root::Dir(path), Vec::new()));
    }
    let rootfs = super::rootfs::ensure_rootfs(value, args.store.as_deref(), args.no_build)?;
    Ok(match &rootfs.layout {
        dsbox_rootfs::RootfsLayout::Host { env_dir } => (
            Root::Host,
            vec![Mount::Bind {
                source: env_dir.clone(),
                destination: PathBuf::from(dsbox_rootfs::ENV_PATH),
                readonly: true,
            }],
        ),
        dsbox_rootfs::RootfsLayout::Dir { root } => (Root::Dir(root.clone()), Vec::new()),
    })
}

fn build_spec(args: &RunArgs) -> anyhow::Result<SandboxSpec> {
    let mut spec = match &args.oci_bundle {
        Some(bundle) => dsbox_runtime::oci::from_bundle(bundle)?,
        None => {
            let (root, mounts) = resolve_rootfs(args)?;
            SandboxSpec {
                root,
                mounts,
                ..SandboxSpec::default()
            }
        }
    };
    if !args.command.is_empty() || args.oci_bundle.is_none() {
        let process = spec.process.get_or_insert_with(ProcessSpec::default);
        process.args = args.command.clone();
    }
    if spec.process.as_ref().is_none_or(|p| p.args.is_empty()) {
        anyhow::bail!("no command given: use `dsbox run [OPTIONS] -- CMD [ARGS...]`");
    }
    if let Some(p) = spec.process.as_mut() {
        for key in PASSTHROUGH_ENV {
            if let Ok(v) = std::env::var(key) {
                p.env.push(((*key).to_owned(), v));
            }
        }
        for e in &args.env {
            p.env.push(parse_env(e)?);
        }
        if let Some(cwd) = &args.cwd {
            p.cwd = cwd.clone();
        }
    }
    // The defaults need cgroups; without them dsbox runs unlimited and says so (limits
    // asked for explicitly are refused by the runtime instead).
    let defaults = args.oci_bundle.is_none()
        && {
            let cgroups = dsbox_runtime::sandbox::cgroup_system();
            let available = !matches!(
                cgroups,
                dsbox_runtime::cgroups::CgroupSystem::Unavailable { .. }
            );
            let usable = available
                && (dsbox_runtime::sandbox::runtime_is_root() || args.cgroup_parent.is_some());
            if !usable {
                eprintln!(
                    "dsbox: warning: no usable cgroups (not root, or none mounted), so no default memory and pids limits; see `dsbox doctor`"
                );
            }
            usable
        };
    match (&args.mem, defaults) {
        (Some(m), _) => spec.limits.memory = Some(parse_size(m)?),
        (None, true) => spec.limits.memory = Some(parse_size(DEFAULT_MEM)?),
        (None, false) => {}
    }
    match (args.pids, defaults) {
        (Some(p), _) => spec.limits.pids = Some(p),
        (None, true) => spec.limits.pids = Some(DEFAULT_PIDS),
        (None, false) => {}
    }
    if let Some(c) = &args.cpus {
        spec.limits.cpus = Some(parse_cpus(c)?);
    }
    if let Some(t) = &args.timeout {
        spec.limits.timeout = Some(parse_duration(t)?);
    }
    spec.network = match args.net.as_str() {
        "none" => Network::None,
        "host" => Network::Host,
        other => anyhow::bail!("invalid --net `{other}`: expected `none` or `host`"),
    };
    for v in &args.ro {
        spec.mounts.push(Mount::parse_bind(v, true)?);
    }
    for v in &args.rw {
        spec.mounts.push(Mount::parse_bind(v, false)?);
    }
    spec.scratch.size = parse_size(&args.scratch_size)?;
    if args.user_namespace {
        spec.namespaces.user = true;
    }
    if let Some(r) = &args.require {
        spec.require = Protection::parse_list(r)?;
    }
    if let Some(f) = &args.seccomp {
        spec.seccomp = SeccompPolicy::File(f.clone());
    }
    if let Some(p) = &args.cgroup_parent {
        spec.cgroup_parent = Some(p.clone());
    }
    spec.validate()?;
    Ok(spec)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let spec = build_spec(&args)?;
    let program = spec
        .process
        .as_ref()
        .map(|p| p.args[0].clone())
        .unwrap_or_default();
    dsbox_runtime::sandbox::hold_forwarded_signals();
    let mut sandbox = Sandbox::spawn(
        &spec,
        SpawnOptions {
            die_with_runtime: true,
            ..SpawnOptions::default()
        },
    )
    .context("cannot start the sandbox")?;
    dsbox_runtime::sandbox::forward_signals_to(&sandbox);
    let report = sandbox.wait()?;
    let cleanup = sandbox.destroy();
    if let Some(errno) = report.exec_errno {
        let err = std::io::Error::from_raw_os_error(errno);
        if errno == 2 {
            eprintln!("dsbox: command not found in the sandbox: {program}");
        } else {
            eprintln!("dsbox: cannot execute {program} in the sandbox: {err}");
        }
    } else if let Some(reason) = report.killed {
        eprintln!("dsbox: {reason}");
    } else if let Some(stats) = report.cgroup
        && stats.pids_max_events > 0
    {
        eprintln!(
            "dsbox: note: the pids limit ({}) was reached {} times",
            spec.limits.pids.unwrap_or_default(),
            stats.pids_max_events
        );
    }
    if let Err(e) = cleanup {
        eprintln!("dsbox: warning: cleanup failed: {e}");
    }
    let code = report.code().clamp(0, 255) as u8;
    Ok(ExitCode::from(code))
}
