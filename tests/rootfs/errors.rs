//! Bad input: one clear line naming the problem and the fix, nothing half-built left.

use std::process::Command;

use crate::common::*;

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/simple")
}

fn one_line_error(out: &Out) -> String {
    assert_eq!(out.code, 1, "expected a failure: {out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("dsbox: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    errors[0].to_string()
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let dir = scratch();
    let err = one_line_error(&rootfs(dir.path(), &["build", "--profile", "nosuch"]));
    assert!(err.contains("unknown profile `nosuch`"), "{err}");
    assert!(
        err.contains("analysis, bench, bio, minimal, prediction"),
        "{err}"
    );
    assert_nothing_left(dir.path());
}

#[test]
fn missing_package_is_named_with_the_installer_message() {
    for installer in ["uv", "pip"] {
        if installer == "uv" && which_uv().is_none() {
            continue;
        }
        let dir = scratch();
        let out = rootfs(
            dir.path(),
            &[
                "build",
                "--profile",
                "minimal",
                "--installer",
                installer,
                "--extra",
                "dsbox-no-such-package-7f3a",
            ],
        );
        let err = one_line_error(&out);
        assert!(
            err.contains("package `dsbox-no-such-package-7f3a` cannot be installed"),
            "{installer}: {err}"
        );
        // The installer's own words, shortened.
        assert!(
            err.contains("not found in the package registry")
                || err.contains("No matching distribution"),
            "{installer}: {err}"
        );
        assert!(err.len() < 600, "not shortened: {err}");
        assert_nothing_left(dir.path());
    }
}

#[test]
fn unreachable_index_is_reported_as_such() {
    for installer in ["uv", "pip"] {
        if installer == "uv" && which_uv().is_none() {
            continue;
        }
        let dir = scratch();
        let url = closed_port_url();
        let mut cmd = rootfs_cmd(
            dir.path(),
            &[
                "build",
                "--profile",
                "minimal",
                "--installer",
                installer,
                "--extra",
                "tabulate",
            ],
        );
        for var in ["UV_INDEX_URL", "UV_DEFAULT_INDEX", "PIP_INDEX_URL"] {
            cmd.env(var, &url);
        }
        // One retry keeps the test quick; pip only reports the connection error when it
        // retries (with PIP_RETRIES=0 it says "no matching distribution" and nothing else).
        cmd.env("PIP_RETRIES", "1")
            .env("UV_HTTP_RETRIES", "0")
            .env_remove("PIP_FIND_LINKS");
        let err = one_line_error(&output(&mut cmd));
        assert!(
            err.contains("no package index reachable"),
            "{installer}: {err}"
        );
        assert!(
            err.contains(url.trim_end_matches("/simple")),
            "{installer}: {err}"
        );
        assert_nothing_left(dir.path());
    }
}

#[test]
fn disk_full_store_fails_cleanly() {
    let dir = scratch();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mount = output(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6m", "dsbox-test-full"])
            .arg(&mnt),
    );
    mount.ok();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let out = rootfs(&mnt, &["build", "--profile", "minimal", "--extra", "numpy"]);
    let err = one_line_error(&out);
    assert!(err.contains("disk full"), "{err}");
    assert!(err.contains("--store"), "{err}");
    assert_nothing_left(&mnt);
}

#[test]
fn oci_base_that_is_not_a_layout_is_refused() {
    let dir = scratch();
    let not_layout = dir.path().join("just-a-dir");
    std::fs::create_dir(&not_layout).unwrap();
    std::fs::write(not_layout.join("hello.txt"), "hi").unwrap();
    let store = dir.path().join("store");
    for source in [
        not_layout.clone(),
        not_layout.join("hello.txt"),
        dir.path().join("missing"),
    ] {
        let base = format!("oci:{}", source.display());
        let err = one_line_error(&rootfs(
            &store,
            &["build", "--profile", "minimal", "--base", &base],
        ));
        assert!(
            err.contains("is not an OCI image layout or `docker save` tarball"),
            "{err}"
        );
        assert_nothing_left(&store);
    }
    let out = rootfs(&store, &["build", "--base", "docker:x"]);
    assert_eq!(out.code, 2, "a bad --base is a usage error: {out:?}");
    assert!(
        out.stderr.contains("use host, debootstrap or oci:PATH"),
        "{}",
        out.stderr
    );
}

#[test]
fn unusable_lock_file_is_refused() {
    let dir = scratch();
    let lock = dir.path().join("lock.txt");
    std::fs::write(&lock, "numpy>=1\n").unwrap();
    let err = one_line_error(&rootfs(
        dir.path(),
        &[
            "build",
            "--profile",
            "minimal",
            "--lock",
            lock.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("is not usable") && err.contains("not pinned"),
        "{err}"
    );
    assert_nothing_left(dir.path());
}

fn which_uv() -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|d| std::path::Path::new(d).join("uv"))
        .find(|p| {
            p.exists()
                && Command::new(p)
                    .arg("--version")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
        })
}

#[test]
fn uv_honours_pip_index_settings() {
    if which_uv().is_none() {
        return;
    }
    // A machine configured for pip only: uv must use the same index.
    let dir = scratch();
    let url = closed_port_url();
    let mut cmd = rootfs_cmd(
        dir.path(),
        &[
            "build",
            "--profile",
            "minimal",
            "--installer",
            "uv",
            "--extra",
            "tabulate",
        ],
    );
    for var in ["UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"] {
        cmd.env_remove(var);
    }
    cmd.env("PIP_INDEX_URL", &url).env("UV_HTTP_RETRIES", "0");
    let err = one_line_error(&output(&mut cmd));
    assert!(err.contains("no package index reachable"), "{err}");
    // uv itself fetched from pip's index.
    assert!(
        err.contains(&format!("Failed to fetch: {url}/tabulate")),
        "{err}"
    );
    assert_nothing_left(dir.path());
}
