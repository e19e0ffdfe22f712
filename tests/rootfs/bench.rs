//! `dsbox bench rootfs`: the README's rootfs figures come from a real run of the bench.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// `dsbox bench rootfs ARGS --json` with its temp dir in `tmp`, the user's uv/pip caches
/// pointed at `user_cache` (which must stay untouched) and profiles from `profiles`.
fn bench(tmp: &Path, user_cache: &Path, profiles: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(dsbox_tests::dsbox_bin());
    cmd.args(["bench", "rootfs", "--json"]).args(args);
    cmd.env("TMPDIR", tmp)
        .env("UV_CACHE_DIR", user_cache.join("uv"))
        .env("PIP_CACHE_DIR", user_cache.join("pip"))
        .env("DSBOX_PROFILES", profiles);
    output(&mut cmd).ok().json()
}

fn assert_figures(r: &serde_json::Value, module: &str) {
    assert_eq!(r["benchmark"], "rootfs");
    assert_eq!(r["module"], module);
    for build in ["build_cold_cache", "build_warm_cache"] {
        assert!(r[build]["seconds"].as_f64().unwrap() > 0.0, "{build}: {r}");
    }
    // The same lock into two fresh stores: the same tree.
    assert_eq!(
        r["build_cold_cache"]["content_hash"],
        r["build_warm_cache"]["content_hash"]
    );
    assert!(r["size"]["bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["size"]["files"].as_u64().unwrap() > 0, "{r}");
    for side in ["import_outside", "import_inside"] {
        for fig in ["import_cpu", "import_wall", "process_cpu", "process_wall"] {
            assert_eq!(r[side][fig]["n"], 2, "{side}.{fig}: {r}");
            assert!(
                r[side][fig]["p50_ms"].as_f64().unwrap() > 0.0,
                "{side}.{fig}: {r}"
            );
        }
    }
    assert!(r["import_cpu_ratio_p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["within_10_percent"].is_boolean());
}

/// Nothing of the bench's temporary stores and caches is left, and the user's caches were
/// not used.
fn assert_clean(tmp: &Path, user_cache: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    assert!(
        !user_cache.join("uv").exists() && !user_cache.join("pip").exists(),
        "the user's package cache was used"
    );
}

#[test]
fn bench_rootfs_reports_builds_size_and_import_times() {
    let dir = scratch();
    let (tmp, cache) = (dir.path().join("tmp"), dir.path().join("user-cache"));
    std::fs::create_dir(&tmp).unwrap();
    let r = bench(
        &tmp,
        &cache,
        Path::new("/nonexistent-dsbox-profiles"),
        &["--profile", "minimal", "--runs", "2", "--import", "json"],
    );
    assert_figures(&r, "json");
    assert_eq!(r["profile"], "minimal");
    assert_eq!(r["size"]["packages"], 0);
    assert_clean(&tmp, &cache);
}

#[test]
fn bench_rootfs_builds_packages_with_its_own_cache() {
    let dir = scratch();
    let (tmp, cache) = (dir.path().join("tmp"), dir.path().join("user-cache"));
    std::fs::create_dir(&tmp).unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("tiny.toml"),
        "extends = \"minimal\"\npackages = [\"tabulate\"]\n",
    )
    .unwrap();
    let r = bench(
        &tmp,
        &cache,
        &profiles,
        &["--profile", "tiny", "--runs", "2", "--import", "tabulate"],
    );
    assert_figures(&r, "tabulate");
    assert_eq!(r["size"]["packages"], 1);
    assert_clean(&tmp, &cache);
}

#[test]
fn bench_rootfs_refuses_a_module_name_that_is_not_one() {
    let out = output(Command::new(dsbox_tests::dsbox_bin()).args([
        "bench",
        "rootfs",
        "--profile",
        "minimal",
        "--import",
        "os; print(1)",
    ]));
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("expected a Python module name"),
        "{}",
        out.stderr
    );
}
