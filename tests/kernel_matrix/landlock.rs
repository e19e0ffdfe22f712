//! Landlock at the kernel's own (older) ABI: the runtime builds its ruleset for that ABI,
//! the kernel accepts it (payloads and processes joining a shell through the JoinPlan),
//! rules are enforced, and what the ABI lacks behaves as `dsbox doctor` says it does.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dsbox_runtime::landlock::{IOCTL_DEV, TRUNCATE, fs_access_for_abi};
use dsbox_runtime::spec::{Mount, SandboxSpec};
use dsbox_runtime::{Sandbox, SpawnOptions};
use dsbox_tests::{PROBE_INSIDE, join_and_run, parse_last_json};
use serde_json::Value;

use crate::fixture::{
    EXPECT_ABI_ENV, Matrix, code, matrix, pipe, probe_spec, read_all, spawn_captured, stderr,
    stdout,
};

/// A world-writable directory holding `secret.txt`, for a bind the sandbox's uid can use.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "x").unwrap();
    dir
}

fn with_unruled_bind(mut spec: SandboxSpec, dir: &Path, ruled: bool) -> SandboxSpec {
    spec.mounts.push(Mount::Bind {
        source: dir.into(),
        destination: "/unruled".into(),
        readonly: false,
    });
    if !ruled {
        spec.landlock.exclude.push("/unruled".into());
    }
    spec
}

/// Run a probe spec to its end; the probe's JSON and the exit code.
fn run(spec: &SandboxSpec) -> (Value, i32) {
    let (mut sb, out) = spawn_captured(spec);
    let report = sb.wait().unwrap();
    sb.destroy().unwrap();
    (parse_last_json(read_all(out).as_bytes()), report.code())
}

fn expected_abi(m: &Matrix) {
    assert!(
        m.landlock_abi >= 1,
        "landlock must be enabled on the matrix kernel"
    );
    if let Ok(want) = std::env::var(EXPECT_ABI_ENV) {
        assert_eq!(
            m.landlock_abi.to_string(),
            want,
            "the runner expects landlock ABI {want}"
        );
    }
}

#[test]
fn the_ruleset_is_built_for_this_abi_and_the_kernel_accepts_it_through_a_join() {
    let Some(m) = matrix() else { return };
    expected_abi(m);
    let abi = m.landlock_abi;
    let dir = open_dir();
    let mut spec = with_unruled_bind(probe_spec(&[]), dir.path(), false);
    spec.process = None;
    let sb = Sandbox::spawn(&spec, SpawnOptions::default()).unwrap();
    let join = sb.join_plan();
    let ll = join.plan.landlock.clone().expect("a landlock plan");
    assert_eq!(ll.abi, abi);
    assert_eq!(ll.handled_access_fs, fs_access_for_abi(abi));
    assert_eq!(ll.handled_access_fs & TRUNCATE != 0, abi >= 3);
    assert_eq!(ll.handled_access_fs & IOCTL_DEV != 0, abi >= 5);
    assert_eq!(ll.scoped != 0, abi >= 6);
    assert_eq!(
        ll.handled_access_net, 0,
        "TCP is left to the network namespace"
    );
    for rule in &ll.rules {
        assert_eq!(
            rule.access & !ll.handled_access_fs,
            0,
            "rule {} has rights this ABI does not handle",
            rule.path.display()
        );
    }
    // A process joining the shell applies exactly this plan (as the zygote's children do):
    // the kernel takes the ruleset (else the join fails at its landlock step) and
    // enforces it: the unruled bind is refused, scratch works.
    let plan = serde_json::to_value(&join.plan).unwrap();
    let procs: Vec<i32> = join.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    let (r, w) = pipe();
    let rc = join_and_run(
        &plan,
        join.pidfd.as_raw_fd(),
        &procs,
        &[
            PROBE_INSIDE,
            "report",
            "--read",
            "/unruled/secret.txt",
            "--write",
            "/unruled/new",
            "--write",
            "/tmp/ok",
        ],
        w.as_raw_fd(),
    );
    drop(w);
    assert_eq!(rc, 0, "the join failed (100+n: step n of tests/src/lib.rs)");
    let j = parse_last_json(read_all(r).as_bytes());
    assert_eq!(j["reads"]["/unruled/secret.txt"], "EACCES", "{j}");
    assert_eq!(j["writes"]["/unruled/new"], "EACCES", "{j}");
    assert_eq!(j["writes"]["/tmp/ok"], "ok", "{j}");
    sb.destroy().unwrap();
}

#[test]
fn landlock_alone_refuses_a_bind_left_out_of_its_rules() {
    let Some(m) = matrix() else { return };
    expected_abi(m);
    let dir = open_dir();
    let args = [
        "report",
        "--read",
        "/unruled/secret.txt",
        "--write",
        "/unruled/new",
    ];
    // Control: with a rule the read-write bind is readable and writable.
    let (j, c) = run(&with_unruled_bind(probe_spec(&args), dir.path(), true));
    assert_eq!(c, 0);
    assert_eq!(j["reads"]["/unruled/secret.txt"], "ok", "{j}");
    assert_eq!(j["writes"]["/unruled/new"], "ok", "{j}");
    // Without one, landlock refuses both although the mount is read-write.
    let (j, c) = run(&with_unruled_bind(probe_spec(&args), dir.path(), false));
    assert_eq!(c, 0);
    assert_eq!(j["reads"]["/unruled/secret.txt"], "EACCES", "{j}");
    assert_eq!(j["writes"]["/unruled/new"], "EACCES", "{j}");
    assert_eq!(j["seccomp"], "2");
    assert_eq!(j["no_new_privs"], "1");
}

const PYTHON_CHECKS: &str = r#"
import errno, os
def attempt(name, f):
    try:
        f()
        print(name + "=ok")
    except OSError as e:
        print(name + "=" + errno.errorcode[e.errno])
attempt("open_for_write", lambda: open("/unruled/victim", "r+").close())
attempt("truncate", lambda: os.truncate("/unruled/victim", 0))
os.makedirs("/tmp/a"); os.makedirs("/tmp/b")
open("/tmp/a/f", "w").close()
attempt("rename_across_dirs", lambda: os.rename("/tmp/a/f", "/tmp/b/f"))
"#;

#[test]
fn features_the_abi_lacks_are_unenforced_exactly_where_doctor_says_so() {
    let Some(m) = matrix() else { return };
    expected_abi(m);
    let abi = m.landlock_abi;
    let dir = open_dir();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "0123456789").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    let spec = SandboxSpec::builder()
        .with_command(["/usr/bin/python3", "-c", PYTHON_CHECKS])
        .with_memory(256 << 20)
        .build()
        .unwrap();
    let spec = with_unruled_bind(spec, dir.path(), false);
    let (mut sb, out) = spawn_captured(&spec);
    let report = sb.wait().unwrap();
    sb.destroy().unwrap();
    let text = read_all(out);
    assert_eq!(report.code(), 0, "{text}");
    // Opening for writing is refused at every ABI.
    assert!(text.contains("open_for_write=EACCES"), "{text}");
    // refer (ABI 2): renames across directories inside scratch keep working.
    assert!(text.contains("rename_across_dirs=ok"), "{text}");
    // truncate (ABI 3): below it the kernel cannot refuse truncate(2).
    let len = std::fs::metadata(&victim).unwrap().len();
    if abi >= 3 {
        assert!(text.contains("truncate=EACCES"), "{text}");
        assert_eq!(len, 10);
    } else {
        assert!(text.contains("truncate=ok"), "{text}");
        assert_eq!(len, 0, "truncate(2) got through, as ABI {abi} implies");
    }
    // ... and `dsbox doctor` says exactly that.
    let out = m.dsbox(&["doctor", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let truncate = j["landlock_features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "truncate")
        .unwrap();
    assert_eq!(truncate["available"], abi >= 3, "{truncate}");
    assert_eq!(truncate["abi"], 3);
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "landlock")
        .unwrap();
    assert_eq!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("truncate (ABI 3)"),
        abi < 3,
        "{check}"
    );
}
