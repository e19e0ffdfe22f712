//! The package installer: `uv` when it is on PATH, else `python3 -m venv` + pip.
//!
//! Both resolve once into a lock (`name==version --hash=sha256:...` lines) and then install
//! exactly the lock with hashes required. Index, proxy and CA settings come from the
//! environment, which is passed through untouched; nothing here names an index. For uv,
//! pip's index variables are translated to uv's when uv's own are unset, so a machine set
//! up for pip works the same with uv.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{IoContext, Result, RootfsError};
use crate::manifest::PackagePin;
use crate::process::{self, Ran};
use crate::profile::{normalize_name, requirement_name};

/// Which installer builds the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    Uv {
        bin: PathBuf,
        version: String,
        /// uv's cache (`UV_CACHE_DIR`); None: uv's default (the user's cache).
        cache_dir: Option<PathBuf>,
    },
    Pip {
        /// pip's cache (`PIP_CACHE_DIR`); None: pip's default (the user's cache).
        cache_dir: Option<PathBuf>,
    },
}

/// What the packages are installed for.
#[derive(Debug, Clone)]
pub enum Target {
    /// A venv whose interpreter runs on this host.
    Venv { python: PathBuf },
    /// A site-packages dir for an interpreter that only runs inside its own tree (OCI,
    /// debootstrap): resolved and installed for its version and platform.
    Foreign {
        site_packages: PathBuf,
        /// `3.11`
        python_version: String,
        /// glibc `(major, minor)`, or None for musl.
        glibc: Option<(u32, u32)>,
        /// A host venv with pip, for the pip path (created on demand).
        tool_env: PathBuf,
    },
}

/// Installer choice requested by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallerChoice {
    /// uv if it works, else pip.
    #[default]
    Auto,
    Uv,
    Pip,
}

impl Installer {
    /// Picks the installer: uv when it is on PATH and answers `--version`, else pip.
    pub fn detect(choice: InstallerChoice) -> Result<Self> {
        if choice != InstallerChoice::Pip {
            if let Some(bin) = process::which("uv") {
                // A pyenv shim named `uv` exists even where uv is not installed: ask it.
                if let Ok(ran) = process::run(process::command(&bin).arg("--version"), "uv")
                    && ran.ok
                {
                    return Ok(Installer::Uv {
                        bin,
                        version: ran.stdout.trim().to_string(),
                        cache_dir: None,
                    });
                }
            }
            if choice == InstallerChoice::Uv {
                return Err(RootfsError::ToolMissing {
                    tool: "uv".into(),
                    hint: "install it with `pip install uv`, or let dsbox fall back to pip".into(),
                });
            }
        }
        Ok(Installer::Pip { cache_dir: None })
    }

    /// The same installer with its package cache in `dir` (None: the installer's default).
    /// `dsbox bench rootfs` builds with an empty one to time a cold cache without touching
    /// the user's.
    pub fn with_cache_dir(self, dir: Option<PathBuf>) -> Self {
        match self {
            Installer::Uv { bin, version, .. } => Installer::Uv {
                bin,
                version,
                cache_dir: dir,
            },
            Installer::Pip { .. } => Installer::Pip { cache_dir: dir },
        }
    }

    /// `uv 0.x.y` or `pip`.
    pub fn describe(&self) -> String {
        match self {
            Installer::Uv { version, .. } => version.clone(),
            Installer::Pip { .. } => "pip".into(),
        }
    }

    fn tool(&self) -> &'static str {
        match self {
            Installer::Uv { .. } => "uv",
            Installer::Pip { .. } => "pip",
        }
    }

    /// Creates a relocatable venv for `python` at `env_dir`.
    pub fn create_venv(&self, python: &Path, env_dir: &Path) -> Result<()> {
        let ran = match self {
            Installer::Uv { bin, cache_dir, .. } => process::run(
                uv_command(bin, cache_dir.as_deref())
                    .args([
                        "venv",
                        "--quiet",
                        "--relocatable",
                        "--no-project",
                        "--python",
                    ])
                    .arg(python)
                    .arg(env_dir),
                "uv",
            )?,
            Installer::Pip { .. } => process::run(
                process::command(python).args(["-m", "venv"]).arg(env_dir),
                "python3 -m venv",
            )?,
        };
        if !ran.ok {
            return Err(classify("creating the venv", self.tool(), &ran, &[]));
        }
        Ok(())
    }

    /// Resolves `requirements` into a lock (text of a hashed requirements file).
    pub fn compile(&self, target: &Target, requirements: &[String], work: &Path) -> Result<String> {
        let req_in = work.join("requirements.in");
        std::fs::write(&req_in, requirements.join("\n") + "\n").at(&req_in)?;
        match self {
            Installer::Uv { bin, cache_dir, .. } => {
                let out = work.join("lock.compiled.txt");
                let mut cmd = uv_command(bin, cache_dir.as_deref());
                cmd.args([
                    "pip",
                    "compile",
                    "--quiet",
                    "--generate-hashes",
                    "--no-header",
                ]);
                target_args_uv(&mut cmd, target);
                cmd.arg(&req_in).arg("-o").arg(&out);
                let ran = process::run(&mut cmd, "uv")?;
                if !ran.ok {
                    return Err(classify("resolving", "uv", &ran, requirements));
                }
                std::fs::read_to_string(&out).at(&out)
            }
            Installer::Pip { .. } => {
                let report = work.join("pip-report.json");
                let mut cmd = self.pip(target)?;
                cmd.args(["install", "--dry-run", "--ignore-installed", "--quiet"]);
                cmd.arg("--report").arg(&report);
                // pip refuses platform options without --target, even for a dry run.
                pip_target_args(&mut cmd, target, Some(&work.join("pip-resolve-target")));
                cmd.arg("-r").arg(&req_in);
                let ran = process::run(&mut cmd, "pip")?;
                if !ran.ok {
                    return Err(classify("resolving", "pip", &ran, requirements));
                }
                lock_from_pip_report(&report)
            }
        }
    }

    /// Installs exactly the lock (hashes required, no dependency resolution).
    pub fn install(&self, target: &Target, lock: &Path) -> Result<()> {
        let pins = parse_lock(lock)?;
        if pins.is_empty() {
            return Ok(());
        }
        let ran = match self {
            Installer::Uv { bin, cache_dir, .. } => {
                let mut cmd = uv_command(bin, cache_dir.as_deref());
                // Copies, not hardlinks into uv's cache: the rootfs must not change when
                // the cache does.
                cmd.args(["pip", "install", "--quiet", "--require-hashes", "--no-deps"]);
                cmd.args(["--link-mode", "copy"]);
                match target {
                    Target::Venv { python } => {
                        cmd.arg("--python").arg(python);
                    }
                    Target::Foreign { site_packages, .. } => {
                        cmd.arg("--target").arg(site_packages);
                        target_args_uv(&mut cmd, target);
                    }
                }
                cmd.arg("-r").arg(lock);
                process::run(&mut cmd, "uv")?
            }
            Installer::Pip { .. } => {
                let mut cmd = self.pip(target)?;
                cmd.args([
                    "install",
                    "--quiet",
                    "--require-hashes",
                    "--no-deps",
                    "--no-compile",
                ]);
                pip_target_args(&mut cmd, target, None);
                cmd.arg("-r").arg(lock);
                process::run(&mut cmd, "pip")?
            }
        };
        if !ran.ok {
            let names: Vec<String> = pins.iter().map(|p| p.name.clone()).collect();
            return Err(classify("installing", self.tool(), &ran, &names));
        }
        Ok(())
    }

    /// `python -m pip` of the venv (host target) or of a tool venv (foreign target).
    fn pip(&self, target: &Target) -> Result<Command> {
        let python = match target {
            Target::Venv { python } => python.clone(),
            Target::Foreign { tool_env, .. } => {
                let python = tool_env.join("bin/python");
                if !python.exists() {
                    let ran = process::run(
                        process::command("/usr/bin/python3")
                            .args(["-m", "venv"])
                            .arg(tool_env),
                        "python3 -m venv",
                    )?;
                    if !ran.ok {
                        return Err(classify("creating pip's tool venv", "pip", &ran, &[]));
                    }
                }
                python
            }
        };
        let mut cmd = process::command(python);
        cmd.args(["-m", "pip"]);
        cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        if let Installer::Pip {
            cache_dir: Some(dir),
        } = self
        {
            cmd.env("PIP_CACHE_DIR", dir);
        }
        Ok(cmd)
    }
}

/// `uv` with pip's index settings mapped to uv's (see [`uv_env_from_pip`]), and its
/// cache in `cache_dir` when one is given.
fn uv_command(bin: &Path, cache_dir: Option<&Path>) -> Command {
    let mut cmd = process::command(bin);
    for (key, value) in uv_env_from_pip() {
        cmd.env(key, value);
    }
    if let Some(dir) = cache_dir {
        cmd.env("UV_CACHE_DIR", dir);
    }
    cmd
}

fn target_args_uv(cmd: &mut Command, target: &Target) {
    match target {
        Target::Venv { python } => {
            cmd.arg("--python").arg(python);
        }
        Target::Foreign {
            python_version,
            glibc,
            ..
        } => {
            cmd.arg("--python-version").arg(python_version);
            cmd.arg("--python-platform").arg(uv_platform(*glibc));
        }
    }
}

/// uv's name for the tree's platform: manylinux for its glibc (uv knows 2.17 to 2.40),
/// musl otherwise.
fn uv_platform(glibc: Option<(u32, u32)>) -> String {
    let arch = std::env::consts::ARCH;
    match glibc {
        Some((2, minor)) => format!("{arch}-manylinux_2_{}", minor.clamp(17, 40)),
        Some(_) => format!("{arch}-manylinux_2_17"),
        None => format!("{arch}-unknown-linux-musl"),
    }
}

/// Platform options for a foreign target; `--target` is the site-packages dir unless
/// `target_dir` names another (resolving).
fn pip_target_args(cmd: &mut Command, target: &Target, target_dir: Option<&Path>) {
    if let Target::Foreign {
        site_packages,
        python_version,
        glibc,
        ..
    } = target
    {
        let arch = std::env::consts::ARCH;
        cmd.arg("--target").arg(target_dir.unwrap_or(site_packages));
        cmd.args(["--only-binary=:all:", "--implementation", "cp"]);
        cmd.arg("--python-version").arg(python_version);
        // pip does not expand perennial manylinux tags downwards: list each one.
        match glibc {
            Some((2, minor)) => {
                for m in (17..=*minor).rev() {
                    cmd.arg("--platform").arg(format!("manylinux_2_{m}_{arch}"));
                }
                cmd.arg("--platform").arg(format!("manylinux2014_{arch}"));
            }
            _ => {
                cmd.arg("--platform").arg(format!("musllinux_1_2_{arch}"));
            }
        }
    }
}

/// uv reads `UV_*`; a machine configured for pip sets `PIP_*`. Map pip's index and CA
/// settings to uv's when uv's are unset.
fn uv_env_from_pip() -> Vec<(OsString, OsString)> {
    let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    if get("UV_INDEX_URL").is_none()
        && get("UV_DEFAULT_INDEX").is_none()
        && let Some(v) = get("PIP_INDEX_URL")
    {
        out.push(("UV_DEFAULT_INDEX".into(), v));
    }
    if get("UV_EXTRA_INDEX_URL").is_none()
        && get("UV_INDEX").is_none()
        && let Some(v) = get("PIP_EXTRA_INDEX_URL")
    {
        out.push(("UV_EXTRA_INDEX_URL".into(), v));
    }
    if get("UV_INSECURE_HOST").is_none()
        && let Some(v) = get("PIP_TRUSTED_HOST")
    {
        out.push(("UV_INSECURE_HOST".into(), v));
    }
    if get("SSL_CERT_FILE").is_none()
        && let Some(v) = get("PIP_CERT")
    {
        out.push(("SSL_CERT_FILE".into(), v));
    }
    out
}

/// The index `tool` (`uv` or `pip`) uses, for error messages.
fn index_in_use(tool: &str) -> String {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let candidates: &[&str] = if tool == "uv" {
        &["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"]
    } else {
        &["PIP_INDEX_URL"]
    };
    candidates
        .iter()
        .find_map(|k| get(k).map(|v| format!("{k}={v}")))
        .unwrap_or_else(|| "the installer's default index".into())
}

/// Turns a failed installer run into the error the user needs: which package does not
/// exist, that no index is reachable, that the disk is full, or the installer's own
/// message, shortened.
pub(crate) fn classify(
    step: &'static str,
    tool: &str,
    ran: &Ran,
    requirements: &[String],
) -> RootfsError {
    let text = ran.text();
    let lower = text.to_lowercase();
    if lower.contains("no space left on device")
        || lower.contains("os error 28")
        || lower.contains("errno 28")
    {
        return RootfsError::DiskFull {
            path: PathBuf::from(path_in_enospc(&text).unwrap_or_else(|| "the store".into())),
        };
    }
    const UNREACHABLE: &[&str] = &[
        "connection refused",
        "failed to establish a new connection",
        "newconnectionerror",
        "tcp connect error",
        "dns error",
        "name or service not known",
        "temporary failure in name resolution",
        "network is unreachable",
        "proxyerror",
        "connecttimeout",
        "connection timed out",
        "operation timed out",
        "error sending request",
    ];
    if UNREACHABLE.iter().any(|p| lower.contains(p)) {
        return RootfsError::RegistryUnreachable {
            index: index_in_use(tool),
            message: process::shorten(&unreachable_line(&text), 200),
        };
    }
    let not_found = [
        r"Because (\S+?)(?:\[[^\]]*\])? was not found in the package registry",
        r"Because there are no versions of (\S+?)(?:\[[^\]]*\])?(?:[=<>!~][^\s]*)? ",
        r"Because (\S+?) was not found in the provided package locations",
        r"No matching distribution found for (\S+)",
    ];
    for pattern in not_found {
        let re = regex::Regex::new(pattern).expect("static regex");
        if let Some(caps) = re.captures(&text) {
            let raw = caps[1].trim_end_matches([',', '.']);
            let name = requirement_name(raw);
            // Name it as the user wrote it when it is one of their requirements.
            let package = requirements
                .iter()
                .find(|r| requirement_name(r) == name)
                .cloned()
                .unwrap_or_else(|| raw.to_string());
            return RootfsError::PackageNotFound {
                package,
                message: process::shorten(&text, 240),
            };
        }
    }
    RootfsError::Installer {
        step,
        tool: tool.to_string(),
        message: process::shorten(&text, 400),
    }
}

fn path_in_enospc(text: &str) -> Option<String> {
    let re = regex::Regex::new(r"(/[^\s:`'\x22]+)").expect("static regex");
    text.lines()
        .find(|l| l.to_lowercase().contains("space") || l.contains("28"))
        .and_then(|l| re.captures(l).map(|c| c[1].to_string()))
}

fn unreachable_line(text: &str) -> String {
    let interesting = [
        "Failed to fetch",
        "Caused by",
        "connect",
        "Connection",
        "Max retries",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| interesting.iter().any(|i| l.contains(i)))
        .collect();
    // The last cause names the socket error; the first line names the URL.
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last => format!("{} ({})", first.trim(), last.trim()),
        (Some(first), _) => first.trim().to_string(),
        _ => text.to_string(),
    }
}

/// Reads a lock: every requirement pinned with `==` and carrying at least one hash.
pub fn parse_lock(path: &Path) -> Result<Vec<PackagePin>> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_lock_text(&text).map_err(|message| RootfsError::BadLock {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses lock text (continuation lines joined).
pub fn parse_lock_text(text: &str) -> std::result::Result<Vec<PackagePin>, String> {
    let joined = text.replace("\\\n", " ");
    let mut pins = Vec::new();
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("--") {
            continue;
        }
        let spec = line.split_whitespace().next().unwrap_or("");
        let spec = spec.split(';').next().unwrap_or(spec);
        let Some((name, version)) = spec.split_once("==") else {
            return Err(format!("`{spec}` is not pinned with =="));
        };
        if !line.contains("--hash=") {
            return Err(format!("`{spec}` has no --hash"));
        }
        pins.push(PackagePin {
            name: normalize_name(name.split('[').next().unwrap_or(name)),
            version: version.to_string(),
        });
    }
    Ok(pins)
}

/// Builds a lock from pip's `--report` JSON (pip >= 22.2).
fn lock_from_pip_report(report: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Report {
        install: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metadata: Meta,
        download_info: Download,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        name: String,
        version: String,
    }
    #[derive(serde::Deserialize)]
    struct Download {
        url: String,
        #[serde(default)]
        archive_info: Option<Archive>,
    }
    #[derive(serde::Deserialize)]
    struct Archive {
        #[serde(default)]
        hashes: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        hash: Option<String>,
    }
    let bytes = std::fs::read(report).at(report)?;
    let report_data: Report =
        serde_json::from_slice(&bytes).map_err(|e| RootfsError::Installer {
            step: "reading pip's report",
            tool: "pip".into(),
            message: e.to_string(),
        })?;
    let mut items = report_data.install;
    items.sort_by_key(|a| normalize_name(&a.metadata.name));
    let mut out =
        String::from("# Resolved by pip (dsbox rootfs build); install with --require-hashes.\n");
    for item in items {
        let sha = item.download_info.archive_info.as_ref().and_then(|a| {
            a.hashes.get("sha256").cloned().or_else(|| {
                a.hash
                    .as_deref()
                    .and_then(|h| h.strip_prefix("sha256="))
                    .map(str::to_string)
            })
        });
        let Some(sha) = sha else {
            return Err(RootfsError::Installer {
                step: "locking",
                tool: "pip".into(),
                message: format!(
                    "{} comes from {} without a sha256: only index packages can be locked",
                    item.metadata.name, item.download_info.url
                ),
            });
        };
        out.push_str(&format!(
            "{}=={} \\\n    --hash=sha256:{sha}\n",
            normalize_name(&item.metadata.name),
            item.metadata.version
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(stderr: &str) -> Ran {
        Ran {
            ok: false,
            stdout: String::new(),
            stderr: stderr.into(),
            status: "exit status: 1".into(),
        }
    }

    #[test]
    fn uv_not_found_names_the_package() {
        let err = classify(
            "resolving",
            "uv",
            &ran(
                "  × No solution found when resolving dependencies:\n  ╰─▶ Because no-such-pkg-dsbox was not found in the package registry and you require no-such-pkg-dsbox, we can conclude that your requirements are unsatisfiable.\n",
            ),
            &["numpy".into(), "No_Such_Pkg_Dsbox".into()],
        );
        match err {
            RootfsError::PackageNotFound { package, message } => {
                assert_eq!(package, "No_Such_Pkg_Dsbox");
                assert!(message.starts_with("No solution found"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pip_not_found_and_unreachable_are_told_apart() {
        let nf = classify(
            "resolving",
            "pip",
            &ran(
                "ERROR: Could not find a version that satisfies the requirement nopkg (from versions: none)\nERROR: No matching distribution found for nopkg\n",
            ),
            &["nopkg".into()],
        );
        assert!(
            matches!(nf, RootfsError::PackageNotFound { ref package, .. } if package == "nopkg")
        );
        let un = classify(
            "resolving",
            "pip",
            &ran(
                "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/numpy/\nERROR: No matching distribution found for numpy\n",
            ),
            &["numpy".into()],
        );
        assert!(
            matches!(un, RootfsError::RegistryUnreachable { .. }),
            "{un:?}"
        );
    }

    #[test]
    fn enospc_is_disk_full() {
        let err = classify(
            "installing",
            "uv",
            &ran(
                "error: Failed to install: numpy\n  Caused by: failed to copy file to /store/tmp/x/env/lib/numpy/core.so: No space left on device (os error 28)\n",
            ),
            &[],
        );
        assert!(matches!(err, RootfsError::DiskFull { .. }), "{err:?}");
    }

    #[test]
    fn lock_parsing_requires_pins_and_hashes() {
        let text = "# comment\nnumpy==2.0.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via pandas\nScikit_Learn==1.5 --hash=sha256:cc\n";
        let pins = parse_lock_text(text).unwrap();
        assert_eq!(pins.len(), 2);
        assert_eq!(pins[1].name, "scikit-learn");
        assert_eq!(pins[1].version, "1.5");
        assert!(
            parse_lock_text("numpy>=1 --hash=sha256:aa\n")
                .unwrap_err()
                .contains("not pinned")
        );
        assert!(
            parse_lock_text("numpy==1\n")
                .unwrap_err()
                .contains("no --hash")
        );
    }

    #[test]
    fn platforms() {
        let arch = std::env::consts::ARCH;
        assert_eq!(uv_platform(Some((2, 36))), format!("{arch}-manylinux_2_36"));
        assert_eq!(uv_platform(Some((2, 12))), format!("{arch}-manylinux_2_17"));
        assert_eq!(uv_platform(None), format!("{arch}-unknown-linux-musl"));
    }
}
