//! The sandbox specification: what to run, which files it sees, its limits and which
//! protections apply. [`SandboxSpec`] is plain serde data; [`SandboxBuilder`] builds one
//! with validation, and [`parse_size`] / [`parse_duration`] turn user text into numbers
//! with errors that name the bad value and the expected form.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The uid/gid that sandboxed code runs as unless the spec says otherwise.
pub const SANDBOX_UID: u32 = 1000;
/// See [`SANDBOX_UID`].
pub const SANDBOX_GID: u32 = 1000;
/// Default `PATH` inside a sandbox: the rootfs crate's Python env first.
pub const DEFAULT_PATH: &str = "/opt/dsbox/env/bin:/usr/local/bin:/usr/bin:/bin";
/// Default hostname inside a sandbox.
pub const DEFAULT_HOSTNAME: &str = "dsbox";
const MIB: u64 = 1024 * 1024;

/// Mount destinations the runtime manages itself; a user mount may not replace them.
const RESERVED_DESTINATIONS: &[&str] = &["/", "/proc", "/dev"];

/// Invalid sandbox specification or user input. Each message names the bad value and how
/// to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error(
        "invalid size `{value}`: expected a number with an optional unit K, M, G or T (e.g. 512M)"
    )]
    InvalidSize { value: String },
    #[error("invalid duration `{value}`: expected a number with a unit ms, s, m or h (e.g. 10s)")]
    InvalidDuration { value: String },
    #[error("invalid cpu count `{value}`: expected a positive number such as 1.0 or 0.5")]
    InvalidCpus { value: String },
    #[error(
        "unknown protection `{name}` for --require: expected one of seccomp, landlock, cgroup, userns"
    )]
    UnknownProtection { name: String },
    #[error(
        "invalid mount `{value}`: expected SRC:DST with an absolute DST (e.g. /data/x:/data/x)"
    )]
    InvalidMountArg { value: String },
    #[error(
        "invalid environment entry `{value}`: expected KEY=VALUE with a non-empty KEY without `=` or NUL"
    )]
    InvalidEnv { value: String },
    #[error("rootfs directory {} does not exist: build one with `dsbox rootfs build` or use `--rootfs host`", path.display())]
    MissingRootfs { path: PathBuf },
    #[error("rootfs {} is not a directory: pass a directory or `host`", path.display())]
    RootfsNotDir { path: PathBuf },
    #[error("mount source {} does not exist: create it or fix the path", path.display())]
    MissingMountSource { path: PathBuf },
    #[error("mount destination `{}` must be an absolute path without `..`", path.display())]
    BadDestination { path: PathBuf },
    #[error("mount destination `{}` is managed by dsbox and cannot be replaced", path.display())]
    ReservedDestination { path: PathBuf },
    #[error("process.args is empty: give the command to run (e.g. `dsbox run -- /bin/true`)")]
    EmptyArgs,
    #[error("argument or path contains a NUL byte: {value:?}")]
    Nul { value: String },
    #[error("invalid hostname `{value}`: 1-64 characters, letters, digits, `-` and `.`")]
    InvalidHostname { value: String },
    #[error("shell mode (no process) needs a pid namespace: enable namespaces.pid")]
    ShellWithoutPidNs,
    #[error("memory limit {value} bytes is too small: give at least 4M")]
    MemoryTooSmall { value: u64 },
    #[error("pids limit must be at least 1")]
    PidsTooSmall,
    #[error("scratch size must be at least 1M (got {value} bytes)")]
    ScratchTooSmall { value: u64 },
}

/// Result alias for spec validation.
pub type Result<T> = std::result::Result<T, SpecError>;

/// Everything the runtime needs to build one sandbox. `process: None` builds a *shell*:
/// init sets everything up and waits for other processes to join (see `JoinPlan`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSpec {
    /// The command to run; `None` for shell mode.
    pub process: Option<ProcessSpec>,
    /// The root filesystem (always mounted read-only).
    pub root: Root,
    /// Extra bind and tmpfs mounts, applied in order after the scratch dirs.
    pub mounts: Vec<Mount>,
    /// Writable, size-limited tmpfs directories.
    pub scratch: Scratch,
    /// Resource limits.
    pub limits: Limits,
    /// Namespaces beyond the always-on mount/ipc/uts/cgroup ones.
    pub namespaces: Namespaces,
    /// `none`: own network namespace with only loopback; `host`: share the host's.
    pub network: Network,
    /// Hostname inside the sandbox (UTS namespace).
    pub hostname: String,
    /// seccomp policy for the payload (and init).
    pub seccomp: SeccompPolicy,
    /// Landlock filesystem rules.
    pub landlock: LandlockSpec,
    /// Drop every capability (default) or keep them (the zygote role only).
    pub capabilities: CapabilityMode,
    /// Set `no_new_privs` before exec (default true).
    pub no_new_privs: bool,
    /// Parent cgroup (relative to each hierarchy's root); default: the runtime's own.
    pub cgroup_parent: Option<PathBuf>,
    /// Refuse to start when one of these protections is unavailable.
    pub require: Vec<Protection>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            process: None,
            root: Root::Host,
            mounts: Vec::new(),
            scratch: Scratch::default(),
            limits: Limits::default(),
            namespaces: Namespaces::default(),
            network: Network::None,
            hostname: DEFAULT_HOSTNAME.to_owned(),
            seccomp: SeccompPolicy::Default,
            landlock: LandlockSpec::default(),
            capabilities: CapabilityMode::Drop,
            no_new_privs: true,
            cgroup_parent: None,
            require: Vec::new(),
        }
    }
}

/// The process to run inside the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the sandbox's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// The complete environment besides the defaults (PATH, HOME, LANG), which these
    /// entries override. Nothing from the runtime's own environment is added.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// uid inside the sandbox.
    pub uid: u32,
    /// gid inside the sandbox.
    pub gid: u32,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/workdir"),
            uid: SANDBOX_UID,
            gid: SANDBOX_GID,
        }
    }
}

impl ProcessSpec {
    /// A process running `args` with the default cwd, uid and environment.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The environment the process gets: defaults, then the spec's entries (last wins).
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), "/workdir".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        for (k, v) in &self.env {
            match env.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        env
    }
}

/// The root filesystem.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Root {
    /// A tmpfs skeleton with read-only binds of the host's /usr, /bin, /lib*, /sbin and an
    /// /etc subset (bubblewrap-style), plus generated passwd/group/hosts.
    Host,
    /// A complete root directory, bound read-only. Mount destinations must exist in it.
    Dir(PathBuf),
}

/// An extra mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mount {
    /// Bind `source` (host path) at `destination`.
    Bind {
        source: PathBuf,
        destination: PathBuf,
        readonly: bool,
    },
    /// A tmpfs at `destination`, writable by the sandbox uid.
    Tmpfs {
        destination: PathBuf,
        size: Option<u64>,
    },
}

impl Mount {
    /// Where the mount appears inside the sandbox.
    pub fn destination(&self) -> &Path {
        match self {
            Mount::Bind { destination, .. } | Mount::Tmpfs { destination, .. } => destination,
        }
    }

    /// Parse a `SRC:DST` command-line value into a bind mount.
    pub fn parse_bind(value: &str, readonly: bool) -> Result<Mount> {
        let (src, dst) = value
            .split_once(':')
            .ok_or_else(|| SpecError::InvalidMountArg {
                value: value.into(),
            })?;
        if src.is_empty() || !dst.starts_with('/') {
            return Err(SpecError::InvalidMountArg {
                value: value.into(),
            });
        }
        Ok(Mount::Bind {
            source: PathBuf::from(src),
            destination: PathBuf::from(dst),
            readonly,
        })
    }
}

/// Writable scratch directories (tmpfs, `size=` limited, owned by the sandbox uid).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Scratch {
    /// Directories; `/tmp` gets mode 1777, the others 0755.
    pub dirs: Vec<PathBuf>,
    /// Size limit of each tmpfs in bytes.
    pub size: u64,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            dirs: ["/tmp", "/workdir", "/submission"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            size: 256 * MIB,
        }
    }
}

/// Resource limits. `None` means no limit of that kind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit in bytes (cgroup; swap is limited to the same total).
    pub memory: Option<u64>,
    /// Maximum number of tasks (cgroup pids controller).
    pub pids: Option<u64>,
    /// CPU quota in cores (cgroup cpu controller).
    pub cpus: Option<f64>,
    /// Wall-clock limit, enforced by `Sandbox::wait` (then killed).
    #[serde(with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
    /// setrlimit values for the payload.
    pub rlimits: Vec<Rlimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: None,
            pids: None,
            cpus: None,
            timeout: None,
            rlimits: vec![
                Rlimit {
                    resource: RlimitResource::Nofile,
                    soft: 1024,
                    hard: 1024,
                },
                Rlimit {
                    resource: RlimitResource::Core,
                    soft: 0,
                    hard: 0,
                },
            ],
        }
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// One resource limit.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

/// The rlimits dsbox knows by name.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RlimitResource {
    Nofile,
    Core,
    Fsize,
    Nproc,
    As,
    Cpu,
    Stack,
    Memlock,
    Data,
}

impl RlimitResource {
    /// The `RLIMIT_*` number.
    #[allow(clippy::unnecessary_cast)] // RLIMIT_* are u32 on glibc, i32 on musl
    pub fn raw(self) -> u32 {
        (match self {
            RlimitResource::Nofile => libc::RLIMIT_NOFILE,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Fsize => libc::RLIMIT_FSIZE,
            RlimitResource::Nproc => libc::RLIMIT_NPROC,
            RlimitResource::As => libc::RLIMIT_AS,
            RlimitResource::Cpu => libc::RLIMIT_CPU,
            RlimitResource::Stack => libc::RLIMIT_STACK,
            RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitResource::Data => libc::RLIMIT_DATA,
        }) as u32
    }

    /// Parse an OCI name such as `RLIMIT_NOFILE`.
    pub fn from_oci(name: &str) -> Option<Self> {
        Some(match name {
            "RLIMIT_NOFILE" => RlimitResource::Nofile,
            "RLIMIT_CORE" => RlimitResource::Core,
            "RLIMIT_FSIZE" => RlimitResource::Fsize,
            "RLIMIT_NPROC" => RlimitResource::Nproc,
            "RLIMIT_AS" => RlimitResource::As,
            "RLIMIT_CPU" => RlimitResource::Cpu,
            "RLIMIT_STACK" => RlimitResource::Stack,
            "RLIMIT_MEMLOCK" => RlimitResource::Memlock,
            "RLIMIT_DATA" => RlimitResource::Data,
            _ => return None,
        })
    }
}

/// Optional namespaces. Mount, IPC, UTS and cgroup namespaces are always new.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Namespaces {
    /// New pid namespace with an init (pid 1). Off only for the zygote role.
    pub pid: bool,
    /// New user namespace (uid 0..65536 inside mapped to 100000.. outside when root).
    pub user: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            pid: true,
            user: false,
        }
    }
}

/// Network mode.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Own network namespace with only loopback (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// Which seccomp policy applies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SeccompPolicy {
    /// The built-in policy (runtime/seccomp/default.json).
    #[default]
    Default,
    /// A seccompiler JSON policy file (every filter in it is applied).
    File(PathBuf),
    /// No seccomp filter (the zygote role only).
    Disabled,
}

/// Landlock configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LandlockSpec {
    /// Apply landlock when the kernel has it.
    pub enabled: bool,
    /// Mount destinations left out of the rules, so they are unreachable even though they
    /// are mounted (used by tests to prove that landlock denies what it does not allow).
    pub exclude: Vec<PathBuf>,
}

impl Default for LandlockSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            exclude: Vec::new(),
        }
    }
}

/// What happens to capabilities.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityMode {
    /// Drop all: bounding, ambient, inheritable, permitted, effective.
    #[default]
    Drop,
    /// Keep them (the zygote, which never runs user code).
    Keep,
}

/// A protection that `--require` can insist on.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    Seccomp,
    Landlock,
    Cgroup,
    Userns,
}

impl Protection {
    /// Parse a comma-separated `--require` list.
    pub fn parse_list(value: &str) -> Result<Vec<Protection>> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| name.parse())
            .collect()
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protection::Seccomp => "seccomp",
            Protection::Landlock => "landlock",
            Protection::Cgroup => "cgroup",
            Protection::Userns => "userns",
        }
    }
}

impl std::str::FromStr for Protection {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "seccomp" => Ok(Protection::Seccomp),
            "landlock" => Ok(Protection::Landlock),
            "cgroup" | "cgroups" => Ok(Protection::Cgroup),
            "userns" => Ok(Protection::Userns),
            other => Err(SpecError::UnknownProtection { name: other.into() }),
        }
    }
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse a size such as `512M`, `1G`, `4096`, `64KiB`. Units are binary (K = 1024).
///
/// ```
/// assert_eq!(dsbox_runtime::spec::parse_size("512M").unwrap(), 512 << 20);
/// assert!(dsbox_runtime::spec::parse_size("12XB").is_err());
/// ```
pub fn parse_size(value: &str) -> Result<u64> {
    let bad = || SpecError::InvalidSize {
        value: value.to_owned(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parse a duration such as `10s`, `500ms`, `2m`, `1h` (a bare number means seconds).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(dsbox_runtime::spec::parse_duration("500ms").unwrap(), Duration::from_millis(500));
/// ```
pub fn parse_duration(value: &str) -> Result<Duration> {
    let bad = || SpecError::InvalidDuration {
        value: value.to_owned(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" | "sec" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Parse a `--cpus` value.
pub fn parse_cpus(value: &str) -> Result<f64> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 4096.0 => Ok(v),
        _ => Err(SpecError::InvalidCpus {
            value: value.into(),
        }),
    }
}

/// Parse a `KEY=VALUE` environment entry.
pub fn parse_env(value: &str) -> Result<(String, String)> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(SpecError::InvalidEnv {
            value: value.into(),
        }),
    }
}

fn check_destination(path: &Path) -> Result<()> {
    let ok = path.is_absolute()
        && !path.components().any(|c| matches!(c, Component::ParentDir))
        && !path.as_os_str().as_encoded_bytes().contains(&0);
    if !ok {
        return Err(SpecError::BadDestination { path: path.into() });
    }
    let normalized: PathBuf = path.components().collect();
    if RESERVED_DESTINATIONS
        .iter()
        .any(|r| normalized == Path::new(r))
    {
        return Err(SpecError::ReservedDestination { path: path.into() });
    }
    Ok(())
}

fn check_nul(value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(SpecError::Nul {
            value: value.into(),
        });
    }
    Ok(())
}

impl SandboxSpec {
    /// Start building a spec.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Check the spec; `Sandbox::spawn` calls this too, so a spec built by hand or read
    /// from JSON gets the same checks as one from the builder.
    pub fn validate(&self) -> Result<()> {
        if let Some(process) = &self.process {
            if process.args.is_empty() {
                return Err(SpecError::EmptyArgs);
            }
            for arg in &process.args {
                check_nul(arg)?;
            }
            for (k, v) in &process.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(SpecError::InvalidEnv {
                        value: format!("{k}={v}"),
                    });
                }
            }
            check_nul(&process.cwd.to_string_lossy())?;
        } else if !self.namespaces.pid {
            return Err(SpecError::ShellWithoutPidNs);
        }
        if let Root::Dir(path) = &self.root {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(SpecError::RootfsNotDir { path: path.clone() }),
                Err(_) => return Err(SpecError::MissingRootfs { path: path.clone() }),
            }
        }
        for mount in &self.mounts {
            check_destination(mount.destination())?;
            if let Mount::Bind { source, .. } = mount
                && !source.exists()
            {
                return Err(SpecError::MissingMountSource {
                    path: source.clone(),
                });
            }
        }
        for dir in &self.scratch.dirs {
            check_destination(dir)?;
        }
        if self.scratch.size < MIB {
            return Err(SpecError::ScratchTooSmall {
                value: self.scratch.size,
            });
        }
        if let Some(memory) = self.limits.memory
            && memory < 4 * MIB
        {
            return Err(SpecError::MemoryTooSmall { value: memory });
        }
        if self.limits.pids == Some(0) {
            return Err(SpecError::PidsTooSmall);
        }
        if let Some(cpus) = self.limits.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            return Err(SpecError::InvalidCpus {
                value: cpus.to_string(),
            });
        }
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 64
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(SpecError::InvalidHostname { value: h.clone() });
        }
        Ok(())
    }
}

/// Builds a [`SandboxSpec`] step by step and validates it.
///
/// ```no_run
/// use dsbox_runtime::spec::{SandboxSpec, parse_size};
/// let spec = SandboxSpec::builder()
///     .with_command(["/usr/bin/python3", "-c", "print(1)"])
///     .with_memory(parse_size("512M").unwrap())
///     .with_pids(256)
///     .build()
///     .unwrap();
/// ```
#[derive(Debug, Default)]
pub struct SandboxBuilder {
    spec: SandboxSpec,
}

impl SandboxBuilder {
    /// Run `args` (argv) in the sandbox.
    pub fn with_command<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        let process = self.spec.process.get_or_insert_with(ProcessSpec::default);
        process.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Add an environment variable for the process.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let process = self.spec.process.get_or_insert_with(ProcessSpec::default);
        process.env.push((key.into(), value.into()));
        self
    }

    /// Set the working directory.
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.spec
            .process
            .get_or_insert_with(ProcessSpec::default)
            .cwd = cwd.into();
        self
    }

    /// Use this root filesystem.
    pub fn with_root(mut self, root: Root) -> Self {
        self.spec.root = root;
        self
    }

    /// Add a mount.
    pub fn with_mount(mut self, mount: Mount) -> Self {
        self.spec.mounts.push(mount);
        self
    }

    /// Memory limit in bytes.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.spec.limits.memory = Some(bytes);
        self
    }

    /// Task limit.
    pub fn with_pids(mut self, pids: u64) -> Self {
        self.spec.limits.pids = Some(pids);
        self
    }

    /// CPU quota in cores.
    pub fn with_cpus(mut self, cpus: f64) -> Self {
        self.spec.limits.cpus = Some(cpus);
        self
    }

    /// Wall-clock timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.spec.limits.timeout = Some(timeout);
        self
    }

    /// Size of each scratch tmpfs.
    pub fn with_scratch_size(mut self, bytes: u64) -> Self {
        self.spec.scratch.size = bytes;
        self
    }

    /// Network mode.
    pub fn with_network(mut self, network: Network) -> Self {
        self.spec.network = network;
        self
    }

    /// Use a user namespace.
    pub fn with_user_namespace(mut self, on: bool) -> Self {
        self.spec.namespaces.user = on;
        self
    }

    /// seccomp policy.
    pub fn with_seccomp(mut self, policy: SeccompPolicy) -> Self {
        self.spec.seccomp = policy;
        self
    }

    /// Protections that must be available.
    pub fn with_require(mut self, require: Vec<Protection>) -> Self {
        self.spec.require = require;
        self
    }

    /// Parent cgroup (relative to each hierarchy's root).
    pub fn with_cgroup_parent(mut self, parent: impl Into<PathBuf>) -> Self {
        self.spec.cgroup_parent = Some(parent.into());
        self
    }

    /// Replace the whole spec being built (e.g. one read from an OCI bundle).
    pub fn from_spec(spec: SandboxSpec) -> Self {
        Self { spec }
    }

    /// Mutable access for fields without a dedicated method.
    pub fn spec_mut(&mut self) -> &mut SandboxSpec {
        &mut self.spec
    }

    /// Validate and return the spec.
    pub fn build(self) -> Result<SandboxSpec> {
        self.spec.validate()?;
        Ok(self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
    }

    #[test]
    fn malformed_sizes_name_the_value() {
        for bad in ["12XB", "", "M", "-1M", "1..2M", "abc"] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(err, SpecError::InvalidSize { value: bad.into() });
        }
        assert!(
            parse_size("12XB")
                .unwrap_err()
                .to_string()
                .contains("`12XB`")
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn require_list_rejects_unknown_names() {
        assert_eq!(
            Protection::parse_list("seccomp,landlock").unwrap(),
            vec![Protection::Seccomp, Protection::Landlock]
        );
        let err = Protection::parse_list("seccomp,apparmor").unwrap_err();
        assert_eq!(
            err,
            SpecError::UnknownProtection {
                name: "apparmor".into()
            }
        );
    }

    #[test]
    fn builder_rejects_missing_rootfs_and_bad_mounts() {
        let err = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_root(Root::Dir("/nonexistent/rootfs".into()))
            .build()
            .unwrap_err();
        assert!(matches!(err, SpecError::MissingRootfs { .. }));

        let err = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_mount(Mount::Tmpfs {
                destination: "/proc".into(),
                size: None,
            })
            .build()
            .unwrap_err();
        assert!(matches!(err, SpecError::ReservedDestination { .. }));

        let err = SandboxSpec::builder()
            .with_command(["/bin/true"])
            .with_mount(Mount::Tmpfs {
                destination: "/a/../etc".into(),
                size: None,
            })
            .build()
            .unwrap_err();
        assert!(matches!(err, SpecError::BadDestination { .. }));
        assert!(Mount::parse_bind("nodst", true).is_err());
        assert!(Mount::parse_bind("/a:relative", true).is_err());
    }

    #[test]
    fn shell_mode_needs_pid_namespace() {
        let mut spec = SandboxSpec::default();
        spec.namespaces.pid = false;
        assert_eq!(spec.validate().unwrap_err(), SpecError::ShellWithoutPidNs);
    }

    #[test]
    fn env_defaults_are_overridden_by_the_spec() {
        let mut p = ProcessSpec::new(["x"]);
        p.env.push(("PATH".into(), "/bin".into()));
        p.env.push(("A".into(), "1".into()));
        let env = p.effective_env();
        assert!(env.contains(&("PATH".into(), "/bin".into())));
        assert!(env.contains(&("A".into(), "1".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = SandboxSpec::builder()
            .with_command(["/bin/echo", "hi"])
            .with_timeout(Duration::from_millis(1500))
            .build()
            .unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: SandboxSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(spec, back);
    }
}
