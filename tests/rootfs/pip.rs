//! The fallback installer: `python3 -m venv` + pip when uv is not on PATH.

use std::process::Command;

use crate::common::*;

#[test]
fn without_uv_pip_builds_a_locked_relocatable_env() {
    let dir = scratch();
    let store = dir.path();
    let mut cmd = rootfs_cmd(
        store,
        &[
            "build",
            "--profile",
            "minimal",
            "--extra",
            "tabulate",
            "--name",
            "piped",
        ],
    );
    cmd.env("PATH", path_without_uv());
    output(&mut cmd).ok();

    let show = rootfs(store, &["show", "piped", "--json"]).ok().json();
    assert_eq!(show["installer"], "pip", "{show}");
    let names: Vec<&str> = show["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tabulate"]);

    let env = env_dir(store, "piped");
    let lock = std::fs::read_to_string(env.parent().unwrap().join("lock.txt")).unwrap();
    assert!(
        lock.contains("tabulate==") && lock.contains("--hash=sha256:"),
        "{lock}"
    );
    // pip writes absolute shebangs; the build makes them relocatable.
    let script = std::fs::read_to_string(env.join("bin/tabulate")).unwrap();
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    let cfg = std::fs::read_to_string(env.join("pyvenv.cfg")).unwrap();
    assert!(
        !cfg.contains(store.to_str().unwrap()),
        "build path leaked into pyvenv.cfg: {cfg}"
    );

    let code = "import sys, tabulate; assert sys.prefix == '/opt/dsbox/env', sys.prefix; assert tabulate.__file__.startswith('/opt/dsbox/env/'); print('ok')";
    assert_eq!(python_at_opt(&env, code, true).ok().stdout.trim(), "ok");
    // The console script runs from the relocated env too.
    let out = output(Command::new("unshare").args([
        "-m", "--propagation", "private", "sh", "-c",
        &format!("mount -t tmpfs t /opt && mkdir -p /opt/dsbox/env && mount --bind '{}' /opt/dsbox/env && printf 'a,b\\n1,2\\n' | /opt/dsbox/env/bin/tabulate -s , -1", env.display()),
    ]));
    assert!(out.ok().stdout.contains("a    b"), "{}", out.stdout);
    rootfs(store, &["verify", "piped"]).ok();
}
