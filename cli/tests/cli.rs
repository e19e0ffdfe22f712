//! Smoke tests of the `dsbox` binary's command line. Having an integration test here also
//! makes `cargo test --workspace` build `target/<profile>/dsbox`, which the workspace-level
//! tests in `tests/` run (cargo builds a package's binaries only for its own integration
//! tests).

use std::process::Command;

fn dsbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsbox"))
        .args(args)
        .output()
        .expect("run dsbox")
}

#[test]
fn version_and_help_name_every_command() {
    let out = dsbox(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("dsbox ") && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );

    let out = dsbox(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "run", "exec", "shell", "rootfs", "tasks", "eval", "demo", "serve", "synth", "bench",
        "doctor",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`dsbox --help` does not list `{command}`:\n{help}"
        );
    }
}

#[test]
fn an_unknown_command_is_named_and_fails() {
    let out = dsbox(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frobnicate"), "{err}");
}
