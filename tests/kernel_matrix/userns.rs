//! User namespaces on a pure v2 kernel: `--user-namespace` sandboxes get the same cgroup
//! limits, and a rootless runtime limits its sandboxes below a cgroup delegated to it
//! (v2 is where delegation is safe; the v1 development hosts cannot test this at all).

use std::os::unix::fs::chown;
use std::process::Command;

use dsbox_tests::PROBE_INSIDE;

use crate::fixture::{Matrix, cgroup_children, code, matrix, remove_tree, stderr, stdout};

/// unshare(CLONE_NEWUSER) works here (vm-run's chroot forbids it; the runner leaves the
/// chroot first). Off the runner a host without it skips these tests.
fn userns_works(m: &Matrix) -> bool {
    let ok = Command::new("unshare")
        .args(["-U", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || !m.required,
        "user namespaces must work inside the VM (run-in-vm.sh leaves vm-run's chroot)"
    );
    ok
}

fn probe_args<'a>(mount: &'a [String], extra: &[&'a str], probe: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(mount.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.push("--");
    args.push(PROBE_INSIDE);
    args.extend_from_slice(probe);
    args
}

#[test]
fn user_namespace_sandboxes_get_the_same_v2_limits() {
    let Some(m) = matrix() else { return };
    if !userns_works(m) {
        return;
    }
    let mount = dsbox_tests::probe_mount();
    let out = m.dsbox(&probe_args(
        &mount,
        &["--user-namespace", "--mem", "64M"],
        &["membomb"],
    ));
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dsbox: killed: out of memory (limit 64 MiB)"),
        "{}",
        stderr(&out)
    );
    let out = m.dsbox(&probe_args(
        &mount,
        &["--user-namespace", "--pids", "24"],
        &["forkbomb", "1000"],
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the pids limit (24) was reached"),
        "{}",
        stderr(&out)
    );
    let out = m.dsbox(&[
        "run",
        "--user-namespace",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/self/uid_map; id -u",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("4294967295"),
        "a user namespace maps a range, not the whole host: {text}"
    );
    assert!(text.trim_end().ends_with("1000"), "{text}");
}

#[test]
fn a_rootless_runtime_limits_its_sandboxes_below_a_delegated_cgroup() {
    let Some(m) = matrix() else { return };
    if !userns_works(m) {
        return;
    }
    // Delegate a cgroup to uid 1000 the way systemd does (Delegate=yes): the directory
    // and the files that create children, move processes and enable controllers.
    let cg = m.new_cgroup("user");
    let dir = m.dir(&cg);
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        chown(dir.join(f), Some(1000), Some(1000)).unwrap();
    }
    let mount = dsbox_tests::probe_mount();
    let parent = cg.display().to_string();
    let args = probe_args(
        &mount,
        &["--cgroup-parent", &parent, "--mem", "64M", "--pids", "24"],
        &["membomb"],
    );
    // Root places the process in the delegated cgroup, then it drops to uid 1000.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1" && shift && exec setpriv --reuid 1000 --regid 1000 --clear-groups "$@""#)
        .arg("sh")
        .arg(dir.join("cgroup.procs"))
        .arg(dsbox_tests::dsbox_bin())
        .args(&args)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 137, "{err}");
    assert!(
        err.contains("dsbox: killed: out of memory (limit 64 MiB)"),
        "{err}"
    );
    assert!(!err.contains("no usable cgroups"), "{err}");
    assert!(cgroup_children(&dir.join("dsbox")).is_empty());
    remove_tree(&dir);
}
