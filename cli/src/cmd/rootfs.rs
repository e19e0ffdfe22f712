//! `dsbox rootfs`: build, list, show, verify and remove Python root filesystems.
//!
//! Also [`ensure_rootfs`], which `run --rootfs`, `exec`, `eval`, `serve` and `demo` call to
//! get a rootfs by name, building it on first use unless `--no-build` is given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dsbox_rootfs::{
    Base, BuildOptions, EnsureOptions, InstallerChoice, ProfileSet, Progress, Rootfs, Store,
};

/// `println!` that ends quietly when stdout is closed (`dsbox rootfs list | head`)
/// instead of panicking, as ripgrep does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

#[derive(Debug, clap::Args)]
pub struct RootfsArgs {
    /// Store directory [default: $DSBOX_STORE, else $XDG_DATA_HOME/dsbox/rootfs].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,

    // Boxed: the build options are large and `Command` holds every command's args inline.
    #[command(subcommand)]
    command: Box<RootfsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum RootfsCommand {
    /// Build a rootfs from a profile (resolve a lock, install, compile bytecode, store).
    Build(BuildArgs),
    /// List built rootfs.
    List(ListArgs),
    /// Show one rootfs: base, python, packages, size, hash, paths.
    Show(ShowArgs),
    /// Re-hash every file against the manifest and name any that changed.
    Verify(NameArg),
    /// Remove rootfs by name (their objects too when nothing else uses them).
    Rm(RmArgs),
    /// Remove unfinished builds and objects no name points at.
    Gc,
    /// List the profiles (built-in and from the user's profile directory).
    Profiles,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Profile to build (see `dsbox rootfs profiles`).
    #[arg(long, short, default_value = dsbox_rootfs::DEFAULT_PROFILE)]
    profile: String,
    /// Base system: host, debootstrap, or oci:PATH (OCI layout dir or `docker save` tarball).
    #[arg(long, default_value = "host", value_parser = parse_base)]
    base: Base,
    /// Name to store it under [default: the profile, or PROFILE-BASE for other bases].
    #[arg(long, short)]
    name: Option<String>,
    /// Extra requirement on top of the profile (repeatable), e.g. --extra polars.
    #[arg(long = "extra", value_name = "PKG")]
    extras: Vec<String>,
    /// Install exactly this lock (a lock.txt written by an earlier build) instead of resolving.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Installer: uv when on PATH, else python3 -m venv + pip.
    #[arg(long, default_value = "auto", value_parser = ["auto", "uv", "pip"])]
    installer: String,
    /// Interpreter of the host base.
    #[arg(long, default_value = "/usr/bin/python3", value_name = "PATH")]
    python: PathBuf,
    /// Debian suite for --base debootstrap [default: the host's].
    #[arg(long)]
    suite: Option<String>,
    /// Debian mirror for --base debootstrap [default: the host's apt mirror].
    #[arg(long)]
    mirror: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    name: String,
    /// Print the manifest (without its file list) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct NameArg {
    name: String,
}

#[derive(Debug, clap::Args)]
struct RmArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

fn parse_base(s: &str) -> Result<Base, String> {
    s.parse()
        .map_err(|e: dsbox_rootfs::RootfsError| e.to_string())
}

pub fn run(args: RootfsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::locate(args.store.as_deref());
    match *args.command {
        RootfsCommand::Build(b) => build(&store, b),
        RootfsCommand::List(l) => list(&store, l.json),
        RootfsCommand::Show(s) => show(&store, &s.name, s.json),
        RootfsCommand::Verify(v) => verify(&store, &v.name),
        RootfsCommand::Rm(r) => {
            for name in &r.names {
                let freed = store.remove(name)?;
                say!(
                    "removed {name}{}",
                    if freed {
                        ""
                    } else {
                        " (its files are shared with another name)"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RootfsCommand::Gc => {
            let report = store.gc()?;
            for dir in &report.temp_dirs_removed {
                say!("removed unfinished build {dir}");
            }
            for obj in &report.objects_removed {
                say!("removed unreferenced object {obj}");
            }
            for name in &report.names_removed {
                say!("removed dangling name {name}");
            }
            if report.temp_dirs_removed.is_empty()
                && report.objects_removed.is_empty()
                && report.names_removed.is_empty()
            {
                say!("nothing to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
        RootfsCommand::Profiles => {
            let set = ProfileSet::load(ProfileSet::default_user_dir().as_deref())?;
            for name in set.names() {
                let p = set.get(&name)?;
                say!("{name:<12} {}", p.description);
                let mut pkgs = p.packages.join(" ");
                if !p.optional.is_empty() {
                    pkgs.push_str(&format!(" (optional: {})", p.optional.join(" ")));
                }
                if !pkgs.is_empty() {
                    say!("{:<12} packages: {pkgs}", "");
                }
                if !p.preload.is_empty() {
                    say!("{:<12} preload: {}", "", p.preload.join(" "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build(store: &Store, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let mut opts = BuildOptions::new(&args.profile);
    opts.name = args.name;
    opts.base = args.base;
    opts.extras = args.extras;
    opts.lock = args.lock;
    opts.installer = match args.installer.as_str() {
        "uv" => InstallerChoice::Uv,
        "pip" => InstallerChoice::Pip,
        _ => InstallerChoice::Auto,
    };
    opts.host_python = args.python;
    opts.debian_suite = args.suite;
    opts.debian_mirror = args.mirror;
    let progress = Progress::auto();
    let built = dsbox_rootfs::build(store, &opts, &progress)?;
    let entry = &built.entry;
    let h = &entry.header;
    if args.json {
        say!("{}", serde_json::to_string_pretty(h)?);
    } else {
        say!(
            "built {} ({} packages, {}, {} files) in {:.1} s: {}",
            entry.name,
            h.packages.len(),
            human_size(h.size_bytes),
            h.file_count,
            built.seconds,
            short_hash(&h.content_hash)
        );
        if built.deduplicated {
            say!("  identical to a rootfs already stored: sharing its files");
        }
        say!("  python {} via {}", h.python_version, h.installer);
        say!("  lock   {}", entry.object_dir.join("lock.txt").display());
    }
    for left in &h.left_out {
        eprintln!(
            "note: optional package {} left out: {}",
            left.package, left.reason
        );
    }
    for warning in &h.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let entries = store.list()?;
    if json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "profile": e.header.profile,
                    "base": e.header.base.kind,
                    "python": e.header.python_version,
                    "packages": e.header.packages.len(),
                    "size_bytes": e.header.size_bytes,
                    "built_at": e.header.built_at,
                    "content_hash": e.header.content_hash,
                    "path": e.tree(),
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        say!(
            "no rootfs built in {} (build one: dsbox rootfs build --profile minimal)",
            store.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<20} {:<11} {:<12} {:<8} {:>5} {:>9}  {:<20} HASH",
        "NAME",
        "PROFILE",
        "BASE",
        "PYTHON",
        "PKGS",
        "SIZE",
        "BUILT"
    );
    for e in entries {
        let h = &e.header;
        say!(
            "{:<20} {:<11} {:<12} {:<8} {:>5} {:>9}  {:<20} {}",
            e.name,
            h.profile,
            h.base.kind,
            h.python_version,
            h.packages.len(),
            human_size(h.size_bytes),
            h.built_at,
            short_hash(&h.content_hash)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(store: &Store, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let rootfs = dsbox_rootfs::open(store, name)?;
    let h = &rootfs.manifest;
    if json {
        say!("{}", serde_json::to_string_pretty(h)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("name        {}", rootfs.name);
    say!("profile     {}", h.profile);
    say!("base        {} ({})", h.base.kind, h.base.source);
    match &rootfs.layout {
        dsbox_rootfs::RootfsLayout::Host { env_dir } => {
            say!(
                "layout      host system dirs + {} at /opt/dsbox/env",
                env_dir.display()
            )
        }
        dsbox_rootfs::RootfsLayout::Dir { root } => say!("layout      root {}", root.display()),
    }
    say!(
        "python      {} at {}",
        h.python_version,
        rootfs.python.display()
    );
    say!("installer   {}", h.installer);
    say!(
        "size        {} in {} files",
        human_size(h.size_bytes),
        h.file_count
    );
    say!("built       {} in {:.1} s", h.built_at, h.build_seconds);
    say!("hash        {}", h.content_hash);
    say!("lock        {}", rootfs.lock_file().display());
    say!("preload     {}", h.preload.join(" "));
    if !h.extras.is_empty() {
        say!("extras      {}", h.extras.join(" "));
    }
    for left in &h.left_out {
        say!("left out    {}: {}", left.package, left.reason);
    }
    for warning in &h.warnings {
        say!("warning     {warning}");
    }
    say!("packages    {}", h.packages.len());
    for p in &h.packages {
        say!("  {}=={}", p.name, p.version);
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(store: &Store, name: &str) -> anyhow::Result<ExitCode> {
    let report = dsbox_rootfs::verify(store, name)?;
    if report.is_clean() {
        say!(
            "{name}: ok, {} files match {}",
            report.files_checked,
            short_hash(&report.content_hash)
        );
        return Ok(ExitCode::SUCCESS);
    }
    for path in &report.changed {
        say!("changed  {path}");
    }
    for path in &report.missing {
        say!("missing  {path}");
    }
    for path in &report.added {
        say!("added    {path}");
    }
    anyhow::bail!(
        "rootfs {name} was modified ({} changed, {} missing, {} added): rebuild it with `dsbox rootfs rm {name}` and `dsbox rootfs build`",
        report.changed.len(),
        report.missing.len(),
        report.added.len()
    )
}

/// The rootfs `name` for commands that run code (`run --rootfs`, `exec`, `eval`, `serve`,
/// `demo`): built on first use with a progress bar when `name` is a profile, unless
/// `no_build`.
pub fn ensure_rootfs(name: &str, store: Option<&Path>, no_build: bool) -> anyhow::Result<Rootfs> {
    let mut opts = EnsureOptions::new(Store::locate(store));
    opts.build_missing = !no_build;
    Ok(dsbox_rootfs::ensure(name, &opts, &Progress::auto())?)
}

fn short_hash(hash: &str) -> String {
    let hex = hash.trim_start_matches("sha256:");
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
