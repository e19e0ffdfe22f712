//! Inside a real sandbox: `dsbox run --rootfs NAME -- /opt/dsbox/env/bin/python -c ...`,
//! the rootfs taken by name from the store the tests share.

use crate::common::*;

fn dsbox_run(args: &[&str], store: &std::path::Path) -> Out {
    output(
        std::process::Command::new(dsbox_tests::dsbox_bin())
            .arg("run")
            .args(args)
            .env("DSBOX_STORE", store),
    )
}

/// Runs python in a sandbox on the shared `analysis` rootfs, named as users name it.
fn sandboxed_python(code: &str) -> Out {
    let (store, _env) = shared("analysis");
    dsbox_run(
        &[
            "--rootfs",
            "analysis",
            "--no-build",
            "--",
            "/opt/dsbox/env/bin/python",
            "-c",
            code,
        ],
        &store,
    )
}

#[test]
fn sandbox_imports_the_stack_offline() {
    let code = "import socket, pandas, numpy, sklearn, statsmodels, matplotlib\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\n    print('online')\nexcept OSError:\n    print('offline')";
    let out = sandboxed_python(code);
    assert_eq!(out.ok().stdout.trim(), "offline");
}

#[test]
fn sandbox_rootfs_is_read_only() {
    let code = "import errno\nfor p in ['/opt/dsbox/env/x', '/usr/x', '/opt/dsbox/env/lib/x']:\n    try:\n        open(p, 'w')\n        print('writable', p)\n    except OSError as e:\n        assert e.errno in (errno.EROFS, errno.EACCES), e\nprint('ok')";
    let out = sandboxed_python(code);
    assert_eq!(out.ok().stdout.trim(), "ok");
}

#[test]
fn sandbox_sys_prefix_is_the_fixed_path() {
    let out = sandboxed_python("import sys, pandas; print(sys.prefix, pandas.__file__)");
    let stdout = out.ok().stdout.trim().to_string();
    assert!(
        stdout.starts_with("/opt/dsbox/env /opt/dsbox/env/lib/"),
        "{stdout}"
    );
}
