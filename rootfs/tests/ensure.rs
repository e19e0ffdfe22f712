//! `ensure`: the entry point `dsbox run --rootfs`, `exec`, `eval`, `serve` and `demo` use.

use dsbox_rootfs::{EnsureOptions, Progress, RootfsError, RootfsLayout, Store};

fn options(store: &Store) -> EnsureOptions {
    let mut opts = EnsureOptions::new(store.clone());
    opts.profiles_dir = None;
    opts
}

#[test]
fn ensure_builds_a_profile_on_first_use_then_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());

    let mut no_build = options(&store);
    no_build.build_missing = false;
    let err = dsbox_rootfs::ensure("minimal", &no_build, &Progress::hidden()).unwrap_err();
    assert!(matches!(err, RootfsError::NotBuilt { .. }), "{err}");
    assert!(err.to_string().contains("dsbox rootfs build"), "{err}");
    assert!(store.list().unwrap().is_empty());

    let first = dsbox_rootfs::ensure("minimal", &options(&store), &Progress::hidden()).unwrap();
    assert!(first.freshly_built);
    let RootfsLayout::Host { env_dir } = &first.layout else {
        panic!("host base gives a Host layout: {:?}", first.layout)
    };
    assert!(env_dir.join("pyvenv.cfg").is_file());
    assert_eq!(first.python.to_str(), Some(dsbox_rootfs::SANDBOX_PYTHON));
    assert!(first.preload.is_empty());
    assert!(first.content_hash.starts_with("sha256:"));
    assert!(first.lock_file().is_file());

    // Second call: found, not rebuilt (same object, same build time).
    let again = dsbox_rootfs::ensure("minimal", &no_build, &Progress::hidden()).unwrap();
    assert!(!again.freshly_built);
    assert_eq!(again.object_dir, first.object_dir);
    assert_eq!(again.manifest.built_at, first.manifest.built_at);
}

#[test]
fn ensure_rejects_names_that_are_neither_built_nor_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let err = dsbox_rootfs::ensure("no-such-rootfs", &options(&store), &Progress::hidden())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither built") && err.contains("analysis, bench, bio, minimal, prediction"),
        "{err}"
    );
    let err = dsbox_rootfs::ensure("../etc", &options(&store), &Progress::hidden())
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid rootfs name"), "{err}");
}

#[test]
fn concurrent_ensure_calls_build_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    dsbox_rootfs::ensure("minimal", &options(&store), &Progress::hidden()).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // One build; the others waited for it and found it.
    let builders = results.iter().filter(|r| r.freshly_built).count();
    assert_eq!(builders, 1, "{builders} of 3 concurrent ensure calls built");
    for r in &results {
        assert_eq!(r.object_dir, results[0].object_dir);
    }
}
