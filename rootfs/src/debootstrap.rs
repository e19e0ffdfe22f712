//! The `debootstrap` base: a hermetic Debian minbase tree with python3, for hosts whose own
//! Python does not fit. Suite and mirror default to the host's apt configuration (no
//! mirror is named here; without one debootstrap uses its own default).

use std::path::Path;

use crate::error::{Result, RootfsError};
use crate::process;

/// Runs debootstrap into `root` (installing it with apt-get when missing). Returns a
/// description of what was bootstrapped.
pub(crate) fn run(root: &Path, suite: Option<&str>, mirror: Option<&str>) -> Result<String> {
    ensure_installed()?;
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let suite = match suite {
        Some(s) => s.to_string(),
        None => os_release_field(&os_release, "VERSION_CODENAME").ok_or_else(|| {
            RootfsError::Debootstrap {
                message: "cannot tell the host's Debian/Ubuntu suite from /etc/os-release: pass --suite (e.g. bookworm)".into(),
            }
        })?,
    };
    let mirror = match mirror {
        Some(m) => Some(m.to_string()),
        None => host_mirror(&suite),
    };
    let mut cmd = process::command("debootstrap");
    cmd.args(["--variant=minbase", "--include=python3,python3-venv"]);
    cmd.arg(&suite).arg(root);
    if let Some(m) = &mirror {
        cmd.arg(m);
    }
    let ran = process::run(&mut cmd, "debootstrap")?;
    if !ran.ok {
        let log =
            std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let text = format!("{}\n{}", ran.text(), tail.join("\n"));
        if text.to_lowercase().contains("no space left") {
            return Err(RootfsError::DiskFull {
                path: root.to_path_buf(),
            });
        }
        return Err(RootfsError::Debootstrap {
            message: format!(
                "{} (suite {suite}, mirror {})",
                process::shorten(&text, 300),
                mirror.as_deref().unwrap_or("debootstrap's default")
            ),
        });
    }
    // Package caches are not part of an environment.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = root.join(dir);
        if let Ok(entries) = std::fs::read_dir(&path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(format!(
        "Debian {suite} minbase + python3 from {}",
        mirror.as_deref().unwrap_or("debootstrap's default mirror")
    ))
}

fn ensure_installed() -> Result<()> {
    if process::which("debootstrap").is_some() || Path::new("/usr/sbin/debootstrap").exists() {
        return Ok(());
    }
    tracing::info!("installing debootstrap with apt-get");
    let install = || {
        process::run(
            process::command("apt-get")
                .args(["install", "-y", "-qq", "debootstrap"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get",
        )
    };
    let mut ran = install()?;
    if !ran.ok {
        // A fresh machine has no package lists yet.
        process::run(
            process::command("apt-get").args(["update", "-qq"]),
            "apt-get",
        )?;
        ran = install()?;
    }
    if !ran.ok {
        return Err(RootfsError::ToolMissing {
            tool: "debootstrap".into(),
            hint: format!(
                "`apt-get install debootstrap` failed: {}",
                process::shorten(&ran.text(), 200)
            ),
        });
    }
    Ok(())
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        let value = value.trim_matches('"').trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The mirror apt on this host uses for `suite` (deb822 `.sources` or `sources.list`).
fn host_mirror(suite: &str) -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                texts.push((path.extension().is_some_and(|e| e == "sources"), text));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, text));
    }
    texts
        .iter()
        .find_map(|(deb822, text)| mirror_in(text, *deb822, suite))
}

fn mirror_in(text: &str, deb822: bool, suite: &str) -> Option<String> {
    if deb822 {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.strip_prefix(':'))
                        .map(str::trim)
                })
            };
            let types = field("Types").unwrap_or("");
            let suites = field("Suites").unwrap_or("");
            if types.split_whitespace().any(|t| t == "deb")
                && suites.split_whitespace().any(|s| s == suite)
            {
                return field("URIs")?.split_whitespace().next().map(str::to_string);
            }
        }
        None
    } else {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            (words.next()? == "deb").then_some(())?;
            let uri = words.next()?;
            (words.next()? == suite).then(|| uri.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, true, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in(deb822, true, "trixie"), None);
        let list = "# c\ndeb [arch=amd64] http://archive.example/ubuntu jammy main\n";
        assert_eq!(
            mirror_in(list, false, "jammy").as_deref(),
            Some("http://archive.example/ubuntu")
        );
        assert_eq!(
            os_release_field("NAME=x\nVERSION_CODENAME=bookworm\n", "VERSION_CODENAME").as_deref(),
            Some("bookworm")
        );
    }
}
