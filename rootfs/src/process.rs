//! Running the build's helper programs (uv, pip, python, debootstrap).
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`: when the builder is killed its installer
//! dies with it instead of writing on into a temp dir that `gc` is about to remove.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::error::{Result, RootfsError};

/// Output of a finished helper.
#[derive(Debug)]
pub(crate) struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

impl Ran {
    /// stderr then stdout, for error classification (the exit status when both are empty).
    pub fn text(&self) -> String {
        if self.stderr.trim().is_empty() && self.stdout.trim().is_empty() {
            return format!("no output, {}", self.status);
        }
        format!("{}\n{}", self.stderr, self.stdout)
    }
}

/// A command line that dies with its parent.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A command run with `root` as its root directory (builds of OCI/debootstrap trees run
/// the tree's own python this way). The program path is inside the tree.
pub(crate) fn chroot_command(root: &Path, program: &str) -> Result<Command> {
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(|_| RootfsError::Io {
        path: root.to_path_buf(),
        source: std::io::Error::other("path holds a NUL byte"),
    })?;
    let mut cmd = command(program);
    // SAFETY: runs in the child between fork and exec; chroot and chdir are
    // async-signal-safe and `root_c` was allocated before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root_c.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `cmd` to completion with stdin closed, capturing its output.
pub(crate) fn run(cmd: &mut Command, tool: &str) -> Result<Ran> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!("running {cmd:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RootfsError::ToolMissing {
                tool: tool.to_string(),
                hint: format!("install it or put it on PATH ({e})"),
            }
        } else {
            RootfsError::Installer {
                step: "starting a helper",
                tool: tool.to_string(),
                message: e.to_string(),
            }
        }
    })?;
    Ok(Ran {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status: status.to_string(),
    })
}

/// Finds an executable on PATH.
pub(crate) fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Removes ANSI colour codes and keeps the message lines that matter, at most `max` chars.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    let ansi = regex::Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").expect("static regex");
    let clean = ansi.replace_all(text, "");
    let mut parts: Vec<&str> = Vec::new();
    for line in clean.lines() {
        let line = line
            .trim()
            .trim_start_matches(['×', '╰', '─', '▶', '│', ' '])
            .trim();
        if line.is_empty()
            || line.starts_with("hint:")
            || line.starts_with("help:")
            || line.starts_with("Using Python")
            || line.starts_with("Resolved ")
            || line.starts_with("Looking in")
            || line.starts_with("WARNING: Retrying")
            || line.starts_with("Collecting ")
        {
            continue;
        }
        if !parts.contains(&line) {
            parts.push(line);
        }
    }
    let mut out = parts.join(" ");
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_strips_colour_and_noise() {
        let text = "\x1b[31m  × No solution found when resolving dependencies:\x1b[0m\n  ╰─▶ Because foo was not found\n\nhint: try bar\n";
        assert_eq!(
            shorten(text, 200),
            "No solution found when resolving dependencies: Because foo was not found"
        );
        assert_eq!(shorten("abcdef", 4), "abc…");
    }

    #[test]
    fn children_run_and_report_failure() {
        let ran = run(
            command("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            "sh",
        )
        .unwrap();
        assert!(!ran.ok);
        assert_eq!(ran.stdout, "out\n");
        assert_eq!(ran.stderr, "err\n");
        assert!(matches!(
            run(&mut command("/nonexistent/tool"), "tool"),
            Err(RootfsError::ToolMissing { .. })
        ));
    }
}
