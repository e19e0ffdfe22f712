//! `dsbox rootfs build`: base system + relocatable environment + locked packages +
//! compiled bytecode, hashed, manifested and committed atomically into the store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::Deserialize;

use crate::error::{IoContext, Result, RootfsError};
use crate::installer::{Installer, InstallerChoice, Target, parse_lock, parse_lock_text};
use crate::manifest::{
    BaseRecord, LayoutKind, LeftOut, MANIFEST_FORMAT, Manifest, hash_file, hash_tree, now_rfc3339,
    tree_dir,
};
use crate::process::{self, chroot_command};
use crate::profile::{Profile, ProfileSet, requirement_name};
use crate::progress::Progress;
use crate::store::{Store, StoreEntry, TempBuild, validate_name};
use crate::{ENV_PATH, SANDBOX_MOUNTPOINTS};

/// Where the base system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The host's `/usr/bin/python3`; the sandbox binds the host's system dirs read-only.
    Host,
    /// A Debian minbase tree made by debootstrap (suite and mirror default to the host's).
    Debootstrap,
    /// An OCI image layout directory or a `docker save` tarball.
    Oci(PathBuf),
}

impl FromStr for Base {
    type Err = RootfsError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(Base::Host),
            "debootstrap" => Ok(Base::Debootstrap),
            _ => match s.strip_prefix("oci:") {
                Some(path) if !path.is_empty() => Ok(Base::Oci(PathBuf::from(path))),
                _ => Err(RootfsError::InvalidBase {
                    base: s.to_string(),
                }),
            },
        }
    }
}

impl Base {
    fn kind(&self) -> &'static str {
        match self {
            Base::Host => "host",
            Base::Debootstrap => "debootstrap",
            Base::Oci(_) => "oci",
        }
    }
}

/// Everything `build` needs to know.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub profile: String,
    /// The store name; default: the profile name (host base) or `<profile>-<base kind>`.
    pub name: Option<String>,
    pub base: Base,
    /// Extra requirements on top of the profile.
    pub extras: Vec<String>,
    /// Install exactly this lock instead of resolving.
    pub lock: Option<PathBuf>,
    pub installer: InstallerChoice,
    /// The interpreter of the host base.
    pub host_python: PathBuf,
    /// The user's profile directory (None: built-in profiles only).
    pub profiles_dir: Option<PathBuf>,
    /// Debian suite and mirror for the debootstrap base (default: the host's).
    pub debian_suite: Option<String>,
    pub debian_mirror: Option<String>,
    /// The installer's package cache (uv's or pip's); None: the installer's default, the
    /// user's cache. `dsbox bench rootfs` passes an empty directory to time a cold cache.
    pub cache_dir: Option<PathBuf>,
}

impl BuildOptions {
    /// Defaults for `profile` on the host base.
    pub fn new(profile: impl Into<String>) -> Self {
        Self {
            profile: profile.into(),
            name: None,
            base: Base::Host,
            extras: Vec::new(),
            lock: None,
            installer: InstallerChoice::Auto,
            host_python: PathBuf::from("/usr/bin/python3"),
            profiles_dir: ProfileSet::default_user_dir(),
            debian_suite: None,
            debian_mirror: None,
            cache_dir: None,
        }
    }

    /// The name the build is stored under.
    pub fn store_name(&self) -> String {
        match (&self.name, &self.base) {
            (Some(name), _) => name.clone(),
            (None, Base::Host) => self.profile.clone(),
            (None, base) => format!("{}-{}", self.profile, base.kind()),
        }
    }
}

/// Facts about an interpreter, asked from the interpreter itself.
#[derive(Debug, Clone, Deserialize)]
struct PyInfo {
    version: String,
    mm: String,
    libc: (String, String),
    stdlib: String,
    cache_tag: String,
}

const PROBE: &str = "import json, platform, sys, sysconfig\nprint(json.dumps({'version': platform.python_version(), 'mm': '%d.%d' % sys.version_info[:2], 'libc': list(platform.libc_ver()), 'stdlib': sysconfig.get_paths()['stdlib'], 'cache_tag': sys.implementation.cache_tag}))";

impl PyInfo {
    fn glibc(&self) -> Option<(u32, u32)> {
        if self.libc.0 != "glibc" {
            return None;
        }
        let mut parts = self.libc.1.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
}

fn probe(mut cmd: std::process::Command, what: &str) -> Result<PyInfo> {
    cmd.args(["-I", "-c", PROBE]);
    let ran = process::run(&mut cmd, what)?;
    if !ran.ok {
        return Err(RootfsError::SmokeTest {
            command: format!("{what} -c <probe>"),
            message: process::shorten(&ran.text(), 300),
        });
    }
    serde_json::from_str(ran.stdout.trim()).map_err(|e| RootfsError::SmokeTest {
        command: format!("{what} -c <probe>"),
        message: format!("unexpected output ({e}): {}", ran.stdout.trim()),
    })
}

/// What a build produced.
struct BuildState {
    layout: LayoutKind,
    base: BaseRecord,
    py: PyInfo,
    requested: Vec<String>,
    left_out: Vec<LeftOut>,
    lock_text: String,
    warnings: Vec<String>,
}

/// What [`build`] did.
#[derive(Debug, Clone)]
pub struct Built {
    pub entry: StoreEntry,
    /// Wall time of this build.
    pub seconds: f64,
    /// The result was identical to an object already stored (same content hash): the name
    /// now points at that object, whose manifest records its first build.
    pub deduplicated: bool,
}

/// Builds a rootfs and stores it under its name. On any error nothing is left behind.
pub fn build(store: &Store, opts: &BuildOptions, progress: &Progress) -> Result<Built> {
    let result = build_inner(store, opts, progress);
    // Clear the bar on failure too, so the error line is not drawn over.
    progress.finish();
    result
}

fn build_inner(store: &Store, opts: &BuildOptions, progress: &Progress) -> Result<Built> {
    let started = Instant::now();
    let name = opts.store_name();
    validate_name(&name)?;
    let profiles = ProfileSet::load(opts.profiles_dir.as_deref())?;
    let profile = profiles.get(&opts.profile)?;
    let lock_text = match &opts.lock {
        Some(path) => {
            parse_lock(path)?;
            Some(std::fs::read_to_string(path).at(path)?)
        }
        None => None,
    };
    if let Base::Oci(path) = &opts.base {
        // Reject a wrong path before anything is created.
        crate::oci::check_source(path)?;
    }
    let installer = Installer::detect(opts.installer)?.with_cache_dir(opts.cache_dir.clone());
    let steps = if opts.base == Base::Host { 6 } else { 7 };
    progress.start(
        steps,
        &format!(
            "building rootfs `{name}` (profile {}, base {})",
            profile.name,
            opts.base.kind()
        ),
    );

    let temp = store.begin(&name)?;
    let state = match &opts.base {
        Base::Host => build_host(&temp, opts, &profile, &installer, lock_text, progress)?,
        base => build_dir(&temp, opts, base, &profile, &installer, lock_text, progress)?,
    };

    progress.step("hashing files and writing the manifest");
    let tree = tree_dir(temp.path(), state.layout);
    let hashed = hash_tree(&tree)?;
    let lock_path = temp.path().join("lock.txt");
    std::fs::write(&lock_path, &state.lock_text).at(&lock_path)?;
    let pins = parse_lock_text(&state.lock_text).map_err(|message| RootfsError::BadLock {
        path: lock_path.clone(),
        message,
    })?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: name.clone(),
        profile: profile.name.clone(),
        layout: state.layout,
        base: state.base,
        python_version: state.py.version.clone(),
        python: PathBuf::from(ENV_PATH).join("bin/python"),
        installer: installer.describe(),
        requested: state.requested,
        extras: opts.extras.clone(),
        left_out: state.left_out,
        packages: pins,
        preload: profile.preload.clone(),
        lock_hash: format!("sha256:{}", hash_file(&lock_path)?),
        size_bytes: hashed.size_bytes,
        file_count: hashed.files.len() as u64,
        built_at: now_rfc3339(),
        build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        warnings: state.warnings,
        content_hash: hashed.content_hash.clone(),
        files: hashed.files,
    };
    manifest.write(&temp.path().join("manifest.json"))?;
    let (_, deduplicated) = store.commit(temp, &name, &manifest.content_hash)?;
    let entry = store.get(&name)?.ok_or_else(|| RootfsError::NotFound {
        name: name.clone(),
        store: store.root().to_path_buf(),
    })?;
    Ok(Built {
        entry,
        seconds: started.elapsed().as_secs_f64(),
        deduplicated,
    })
}

fn build_host(
    temp: &TempBuild,
    opts: &BuildOptions,
    profile: &Profile,
    installer: &Installer,
    lock_text: Option<String>,
    progress: &Progress,
) -> Result<BuildState> {
    let env = temp.path().join("env");
    progress.step(format!("creating the venv ({})", installer.describe()));
    let py = probe(
        process::command(&opts.host_python),
        &opts.host_python.display().to_string(),
    )?;
    let mut warnings = Vec::new();
    let stdlib_pyc = Path::new(&py.stdlib)
        .join("__pycache__")
        .join(format!("os.{}.pyc", py.cache_tag));
    if !stdlib_pyc.exists() {
        warnings.push(format!(
            "the host's stdlib has no bytecode ({} is missing): imports will be slower; run `{} -m compileall {}` as root",
            stdlib_pyc.display(),
            opts.host_python.display(),
            py.stdlib
        ));
    }
    installer.create_venv(&opts.host_python, &env)?;
    let target = Target::Venv {
        python: env.join("bin/python"),
    };

    progress.step("resolving the lock");
    let (lock_text, requested, left_out) = match lock_text {
        Some(text) => (text, requirements(profile, opts), Vec::new()),
        None => resolve(installer, &target, profile, opts, temp.path())?,
    };
    let lock_path = temp.path().join("lock.txt");
    std::fs::write(&lock_path, &lock_text).at(&lock_path)?;

    let count = parse_lock_text(&lock_text).map(|p| p.len()).unwrap_or(0);
    progress.step(format!(
        "installing {count} package{}",
        if count == 1 { "" } else { "s" }
    ));
    installer.install(&target, &lock_path)?;
    relocate_scripts(&env, &env)?;

    progress.step("compiling bytecode");
    compile_bytecode(
        process::command(env.join("bin/python")),
        &env,
        &env.join("lib"),
        0,
    )?;

    progress.step("checking the environment");
    smoke_test(process::command(env.join("bin/python")), &env, profile)?;

    Ok(BuildState {
        layout: LayoutKind::Host,
        base: BaseRecord {
            kind: "host".into(),
            source: format!("{} (Python {})", opts.host_python.display(), py.version),
        },
        py,
        requested,
        left_out,
        lock_text,
        warnings,
    })
}

fn build_dir(
    temp: &TempBuild,
    opts: &BuildOptions,
    base: &Base,
    profile: &Profile,
    installer: &Installer,
    lock_text: Option<String>,
    progress: &Progress,
) -> Result<BuildState> {
    let root = temp.path().join("root");
    std::fs::create_dir(&root).at(&root)?;
    let (base_record, path_dirs) = match base {
        Base::Debootstrap => {
            progress.step("debootstrap: Debian minbase with python3");
            let source = crate::debootstrap::run(
                &root,
                opts.debian_suite.as_deref(),
                opts.debian_mirror.as_deref(),
            )?;
            (
                BaseRecord {
                    kind: "debootstrap".into(),
                    source,
                },
                vec!["/usr/local/bin".to_string(), "/usr/bin".to_string()],
            )
        }
        Base::Oci(path) => {
            progress.step(format!("importing OCI image {}", path.display()));
            let imported = crate::oci::import(path, &root, &temp.path().join("oci-work"))?;
            (
                BaseRecord {
                    kind: "oci".into(),
                    source: format!("{} ({})", path.display(), imported.manifest_digest),
                },
                imported.path_dirs,
            )
        }
        Base::Host => {
            return Err(RootfsError::InvalidBase {
                base: "host (not a tree base)".into(),
            });
        }
    };
    prepare_tree(&root)?;

    progress.step("creating the environment inside the tree");
    let python_inside = find_python(&root, &path_dirs)?;
    let py = probe(
        chroot_command(&root, &python_inside)?,
        &format!("chroot python3 ({python_inside})"),
    )?;
    let mut warnings = Vec::new();
    let env = root.join(ENV_PATH.trim_start_matches('/'));
    let site_packages = make_venv(&env, &python_inside, &py)?;

    progress.step("resolving the lock");
    let target = Target::Foreign {
        site_packages: site_packages.clone(),
        python_version: py.mm.clone(),
        glibc: py.glibc(),
        tool_env: temp.path().join("tool-env"),
    };
    let (lock_text, requested, left_out) = match lock_text {
        Some(text) => (text, requirements(profile, opts), Vec::new()),
        None => resolve(installer, &target, profile, opts, temp.path())?,
    };
    let lock_path = temp.path().join("lock.txt");
    std::fs::write(&lock_path, &lock_text).at(&lock_path)?;

    let count = parse_lock_text(&lock_text).map(|p| p.len()).unwrap_or(0);
    progress.step(format!(
        "installing {count} package{}",
        if count == 1 { "" } else { "s" }
    ));
    installer.install(&target, &lock_path)?;
    move_target_scripts(&site_packages, &env)?;
    relocate_scripts(&env, Path::new(ENV_PATH))?;
    let tool_env = temp.path().join("tool-env");
    if tool_env.exists() {
        crate::store::remove_tree(&tool_env)?;
    }

    progress.step("compiling bytecode");
    // The tree's stdlib is ours to fix: images without .pyc get them.
    let stdlib_in_tree = root.join(py.stdlib.trim_start_matches('/'));
    let pyc = stdlib_in_tree
        .join("__pycache__")
        .join(format!("os.{}.pyc", py.cache_tag));
    if !pyc.exists() {
        warnings.push(format!(
            "the image's stdlib had no bytecode; compiled {}",
            py.stdlib
        ));
        compile_bytecode(
            chroot_command(&root, &python_inside)?,
            Path::new("/"),
            Path::new(&py.stdlib),
            1,
        )?;
    }
    compile_bytecode(
        chroot_command(&root, ENV_PYTHON)?,
        Path::new(ENV_PATH),
        &Path::new(ENV_PATH).join("lib"),
        1,
    )?;

    progress.step("checking the environment");
    smoke_test(
        chroot_command(&root, ENV_PYTHON)?,
        Path::new(ENV_PATH),
        profile,
    )?;

    Ok(BuildState {
        layout: LayoutKind::Dir,
        base: base_record,
        py,
        requested,
        left_out,
        lock_text,
        warnings,
    })
}

const ENV_PYTHON: &str = "/opt/dsbox/env/bin/python";

/// Creates the dirs the sandbox mounts over and empties /dev (the sandbox brings its own).
fn prepare_tree(root: &Path) -> Result<()> {
    let dev = root.join("dev");
    if dev.exists() {
        crate::store::remove_tree(&dev)?;
    }
    for dir in SANDBOX_MOUNTPOINTS {
        let path = root.join(dir.trim_start_matches('/'));
        // A symlink here (e.g. /tmp -> elsewhere) would redirect the sandbox's mount.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path).at(&path)?;
        }
        std::fs::create_dir_all(&path).at(&path)?;
    }
    let tmp = root.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).at(&tmp)?;
    // /etc/resolv.conf and friends from the build host do not belong in an image.
    Ok(())
}

/// The image's python3, as a path inside the tree.
fn find_python(root: &Path, path_dirs: &[String]) -> Result<String> {
    let mut looked = Vec::new();
    let mut dirs: Vec<String> = path_dirs.to_vec();
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|x| x == d) {
            dirs.push(d.to_string());
        }
    }
    for dir in dirs {
        let inside = format!("{}/python3", dir.trim_end_matches('/'));
        looked.push(inside.clone());
        if let Ok(host) = crate::oci::resolve_in_root(root, Path::new(&inside))
            && host.is_file()
        {
            return Ok(inside);
        }
    }
    Err(RootfsError::NoPythonInImage {
        looked: looked.join(", "),
    })
}

/// Writes a venv by hand: `pyvenv.cfg` plus interpreter links. `python -m venv` is not
/// usable here: Debian's python3 lacks it without python3-venv, and it would have to run
/// inside the tree anyway; a venv is only these few files.
fn make_venv(env: &Path, python_inside: &str, py: &PyInfo) -> Result<PathBuf> {
    let bin = env.join("bin");
    let site = env.join(format!("lib/python{}/site-packages", py.mm));
    std::fs::create_dir_all(&bin).at(&bin)?;
    std::fs::create_dir_all(&site).at(&site)?;
    let home = Path::new(python_inside)
        .parent()
        .unwrap_or(Path::new("/usr/bin"));
    let cfg = env.join("pyvenv.cfg");
    std::fs::write(
        &cfg,
        format!(
            "home = {}\ninclude-system-site-packages = false\nversion = {}\n",
            home.display(),
            py.version
        ),
    )
    .at(&cfg)?;
    let link = bin.join("python");
    std::os::unix::fs::symlink(python_inside, &link).at(&link)?;
    for alias in ["python3".to_string(), format!("python{}", py.mm)] {
        let link = bin.join(alias);
        std::os::unix::fs::symlink("python", &link).at(&link)?;
    }
    Ok(site)
}

/// `--target` installs put console scripts in `<site-packages>/bin`: move them to the
/// env's bin.
fn move_target_scripts(site_packages: &Path, env: &Path) -> Result<()> {
    let from = site_packages.join("bin");
    if !from.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&from).at(&from)? {
        let entry = entry.at(&from)?;
        let to = env.join("bin").join(entry.file_name());
        if !to.exists() {
            std::fs::rename(entry.path(), &to).at(&to)?;
        }
    }
    crate::store::remove_tree(&from)
}

/// The trampoline uv writes into relocatable venvs: finds `python` next to the script,
/// wherever the env is mounted.
const RELOCATABLE_SHEBANG: &str = "#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/'python' \"$0\" \"$@\"\n' '''\n";

/// Makes `bin/` independent of the build path: script shebangs naming an interpreter in
/// the build dir (pip writes absolute ones) become the relocatable trampoline, and any other
/// mention of the build dir (activate scripts, pyvenv.cfg's `command`) becomes the sandbox
/// path.
fn relocate_scripts(env: &Path, build_path: &Path) -> Result<()> {
    let build = build_path.to_string_lossy().into_owned();
    let bin = env.join("bin");
    for entry in std::fs::read_dir(&bin).at(&bin)? {
        let path = entry.at(&bin)?.path();
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        if !meta.is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // binary
        };
        let mut new = text.clone();
        if let Some(first) = text.lines().next() {
            // Any python shebang: pip writes the build path, `--target` installs the
            // interpreter uv ran with; inside the sandbox only the env's python exists.
            let interp = first.trim_start_matches("#!").trim();
            let interp_name = interp.split_whitespace().next().unwrap_or("");
            let is_python = Path::new(interp_name)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python"));
            if first.starts_with("#!") && is_python {
                new = format!(
                    "{RELOCATABLE_SHEBANG}{}",
                    &text[first.len()..].trim_start_matches('\n')
                );
            }
        }
        if build != ENV_PATH {
            new = new.replace(&build, ENV_PATH);
        }
        if new != text {
            std::fs::write(&path, new).at(&path)?;
        }
    }
    let cfg = env.join("pyvenv.cfg");
    if let Ok(text) = std::fs::read_to_string(&cfg) {
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("command")).collect();
        std::fs::write(&cfg, kept.join("\n") + "\n").at(&cfg)?;
    }
    Ok(())
}

/// Compiles every .py under `dir` (unchecked-hash .pyc: the env never changes after the
/// build and `verify` checks the sources; no stat of the source on import). `strip` is the
/// build-time location of the env, replaced by the sandbox path in the recorded file names
/// so tracebacks show `/opt/dsbox/env/...`.
fn compile_bytecode(
    mut python: std::process::Command,
    strip: &Path,
    dir: &Path,
    workers: u32,
) -> Result<()> {
    python.args([
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
    ]);
    python.arg(format!("-j{workers}"));
    if strip != Path::new("/") && strip != Path::new(ENV_PATH) {
        python.arg("-s").arg(strip).arg("-p").arg(ENV_PATH);
    }
    python.arg(dir);
    let ran = process::run(&mut python, "python -m compileall")?;
    if !ran.ok {
        let text = ran.text();
        if text.to_lowercase().contains("no space left") {
            return Err(RootfsError::DiskFull {
                path: dir.to_path_buf(),
            });
        }
        // Packages ship files that are not valid Python 3 (templates, test fixtures);
        // compileall reports them and fails, but the modules that import still compiled.
        tracing::warn!(
            "compileall reported errors: {}",
            process::shorten(&text, 300)
        );
    }
    Ok(())
}

/// Imports the preload modules with the environment's interpreter.
fn smoke_test(mut python: std::process::Command, env: &Path, profile: &Profile) -> Result<()> {
    let mut code = String::from("import sys\n");
    code.push_str(&format!(
        "assert sys.prefix == {:?}, 'sys.prefix is ' + sys.prefix\n",
        env.to_string_lossy()
    ));
    for module in &profile.preload {
        code.push_str(&format!("import {module}\n"));
    }
    python.args(["-c", &code]);
    let ran = process::run(&mut python, "python")?;
    if !ran.ok {
        return Err(RootfsError::SmokeTest {
            command: format!("python -c 'import {}'", profile.preload.join(", ")),
            message: process::shorten(&ran.text(), 300),
        });
    }
    Ok(())
}

fn requirements(profile: &Profile, opts: &BuildOptions) -> Vec<String> {
    let mut reqs = profile.packages.clone();
    for extra in &opts.extras {
        let name = requirement_name(extra);
        reqs.retain(|r| requirement_name(r) != name);
        reqs.push(extra.clone());
    }
    reqs
}

/// Resolves the profile: required packages + extras must resolve; each optional package is
/// added only if the set still resolves, otherwise it is left out with the resolver's
/// reason. Network and disk errors are not "left out": they stop the build.
fn resolve(
    installer: &Installer,
    target: &Target,
    profile: &Profile,
    opts: &BuildOptions,
    work: &Path,
) -> Result<(String, Vec<String>, Vec<LeftOut>)> {
    let required = requirements(profile, opts);
    let optional: Vec<String> = profile
        .optional
        .iter()
        .filter(|o| {
            !required
                .iter()
                .any(|r| requirement_name(r) == requirement_name(o))
        })
        .cloned()
        .collect();
    let mut all = required.clone();
    all.extend(optional.iter().cloned());
    if all.is_empty() {
        return Ok((String::from("# no packages\n"), all, Vec::new()));
    }
    match installer.compile(target, &all, work) {
        Ok(lock) => return Ok((lock, all, Vec::new())),
        Err(err) if optional.is_empty() || !is_resolution_failure(&err) => return Err(err),
        Err(_) => {}
    }
    let mut accepted = required.clone();
    let mut lock = if required.is_empty() {
        String::from("# no packages\n")
    } else {
        installer.compile(target, &required, work)?
    };
    let mut left_out = Vec::new();
    for opt in optional {
        let mut attempt = accepted.clone();
        attempt.push(opt.clone());
        match installer.compile(target, &attempt, work) {
            Ok(new_lock) => {
                accepted = attempt;
                lock = new_lock;
            }
            Err(err) if is_resolution_failure(&err) => {
                tracing::warn!("optional package {opt} left out: {err}");
                left_out.push(LeftOut {
                    package: opt,
                    reason: err.to_string(),
                });
            }
            Err(err) => return Err(err),
        }
    }
    Ok((lock, accepted, left_out))
}

fn is_resolution_failure(err: &RootfsError) -> bool {
    matches!(
        err,
        RootfsError::PackageNotFound { .. } | RootfsError::Installer { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_parsing() {
        assert_eq!("host".parse::<Base>().unwrap(), Base::Host);
        assert_eq!(
            "oci:/x/y".parse::<Base>().unwrap(),
            Base::Oci(PathBuf::from("/x/y"))
        );
        for bad in ["oci:", "docker", ""] {
            let err = bad.parse::<Base>().unwrap_err().to_string();
            assert!(err.contains("use host, debootstrap or oci:PATH"), "{err}");
        }
    }

    #[test]
    fn default_names() {
        let mut opts = BuildOptions::new("analysis");
        assert_eq!(opts.store_name(), "analysis");
        opts.base = Base::Debootstrap;
        assert_eq!(opts.store_name(), "analysis-debootstrap");
        opts.name = Some("mine".into());
        assert_eq!(opts.store_name(), "mine");
    }

    #[test]
    fn extras_replace_profile_pins_of_the_same_package() {
        let profile = ProfileSet::load(None).unwrap().get("analysis").unwrap();
        let mut opts = BuildOptions::new("analysis");
        opts.extras = vec!["pandas<3".into(), "polars".into()];
        let reqs = requirements(&profile, &opts);
        assert!(reqs.contains(&"pandas<3".to_string()));
        assert!(!reqs.contains(&"pandas".to_string()));
        assert_eq!(reqs.last().unwrap(), "polars");
    }

    #[test]
    fn relocation_rewrites_build_paths() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("env");
        std::fs::create_dir_all(env.join("bin")).unwrap();
        let build = env.display().to_string();
        std::fs::write(
            env.join("bin/tool"),
            format!("#!{build}/bin/python3\nimport sys\n"),
        )
        .unwrap();
        std::fs::write(env.join("bin/activate"), format!("VIRTUAL_ENV={build}\n")).unwrap();
        std::fs::write(
            env.join("pyvenv.cfg"),
            format!("home = /usr/bin\ncommand = /usr/bin/python3 -m venv {build}\n"),
        )
        .unwrap();
        relocate_scripts(&env, &env).unwrap();
        let tool = std::fs::read_to_string(env.join("bin/tool")).unwrap();
        assert!(
            tool.starts_with(RELOCATABLE_SHEBANG) && tool.ends_with("import sys\n"),
            "{tool}"
        );
        assert_eq!(
            std::fs::read_to_string(env.join("bin/activate")).unwrap(),
            "VIRTUAL_ENV=/opt/dsbox/env\n"
        );
        assert_eq!(
            std::fs::read_to_string(env.join("pyvenv.cfg")).unwrap(),
            "home = /usr/bin\n"
        );
    }
}
