//! Inside a real sandbox: `dsbox run --rootfs NAME -- /opt/dsbox/env/bin/python -c ...`.
//!
//! While `dsbox run` cannot take a store name yet, the same rootfs is passed the way its
//! `RootfsLayout::Host` says to mount it (`--rootfs host --ro ENV:/opt/dsbox/env`), so these
//! tests run in a real sandbox either way. A test skips (with a one-line note) only when
//! neither form is accepted (`dsbox run` not built yet, or without those options); the
//! lead removes the fallback when `--rootfs NAME` is wired into `dsbox run`.

use crate::common::*;

fn dsbox_run(args: &[&str], store: &std::path::Path) -> Out {
    output(
        std::process::Command::new(dsbox_tests::dsbox_bin())
            .arg("run")
            .args(args)
            .env("DSBOX_STORE", store),
    )
}

fn not_supported(out: &Out) -> bool {
    out.stderr.contains("not built yet")
        || out.stderr.contains("not supported by `dsbox run` yet")
        || out.stderr.contains("unexpected argument")
}

/// Runs python in a sandbox on the shared `analysis` rootfs, or None while `dsbox run` cannot.
fn sandboxed_python(code: &str) -> Option<Out> {
    let (store, env) = shared("analysis");
    let python = ["/opt/dsbox/env/bin/python", "-c", code];
    let mut by_name = vec!["--rootfs", "analysis", "--"];
    by_name.extend(python);
    let out = dsbox_run(&by_name, &store);
    if !not_supported(&out) {
        return Some(out);
    }
    let bind = format!("{}:/opt/dsbox/env", env.display());
    let mut by_layout = vec!["--rootfs", "host", "--ro", &bind, "--"];
    by_layout.extend(python);
    let fallback = dsbox_run(&by_layout, &store);
    if not_supported(&fallback) {
        eprintln!(
            "skipped: `dsbox run` cannot run a rootfs yet ({})",
            fallback.stderr.trim()
        );
        return None;
    }
    Some(fallback)
}

#[test]
fn sandbox_imports_the_stack_offline() {
    let code = "import socket, pandas, numpy, sklearn, statsmodels, matplotlib\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\n    print('online')\nexcept OSError:\n    print('offline')";
    let Some(out) = sandboxed_python(code) else {
        return;
    };
    assert_eq!(out.ok().stdout.trim(), "offline");
}

#[test]
fn sandbox_rootfs_is_read_only() {
    let code = "import errno\nfor p in ['/opt/dsbox/env/x', '/usr/x', '/opt/dsbox/env/lib/x']:\n    try:\n        open(p, 'w')\n        print('writable', p)\n    except OSError as e:\n        assert e.errno in (errno.EROFS, errno.EACCES), e\nprint('ok')";
    let Some(out) = sandboxed_python(code) else {
        return;
    };
    assert_eq!(out.ok().stdout.trim(), "ok");
}

#[test]
fn sandbox_sys_prefix_is_the_fixed_path() {
    let Some(out) = sandboxed_python("import sys, pandas; print(sys.prefix, pandas.__file__)")
    else {
        return;
    };
    let stdout = out.ok().stdout.trim().to_string();
    assert!(
        stdout.starts_with("/opt/dsbox/env /opt/dsbox/env/lib/"),
        "{stdout}"
    );
}
