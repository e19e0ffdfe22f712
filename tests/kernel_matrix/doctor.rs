//! `dsbox doctor` on the matrix kernel: it must report cgroup v2, where sandboxes go, the
//! landlock ABI with what that ABI lacks, and that this setup is one dsbox is tested on.

use dsbox_runtime::doctor::tested_setup_matching;
use serde_json::Value;

use crate::fixture::{code, matrix, stderr, stdout};

#[test]
fn doctor_json_reports_v2_the_landlock_abi_and_the_tested_setup() {
    let Some(m) = matrix() else { return };
    let (mut cmd, cg) = m.dsbox_command(&["doctor", "--json"]);
    let out = cmd.output().unwrap();
    let cg_dir = m.dir(&cg);
    m.finish_cli_cgroup(&cg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(j["kernel"], release.trim());
    assert_eq!(j["cgroup_mode"], "v2", "{j}");
    // The doctor process ran alone in its own cgroup: that is where sandboxes would go.
    assert_eq!(
        j["sandbox_cgroup_parents"],
        serde_json::json!([cg_dir.join("dsbox")]),
        "{j}"
    );
    let hierarchies = j["hierarchies"].as_array().unwrap();
    assert!(
        hierarchies.iter().all(|h| h["version"] == "v2"),
        "a pure v2 host: {hierarchies:?}"
    );
    let ours = hierarchies
        .iter()
        .find(|h| h["mount"] == m.mount.to_str().unwrap())
        .expect("the cgroup2 mount is listed");
    for c in ["memory", "pids", "cpu"] {
        assert!(
            ours["controllers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == c),
            "{ours}"
        );
    }
    let check = |name: &str| -> Value {
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {j}"))
    };
    let cgroups = check("cgroups");
    assert_eq!(cgroups["available"], true);
    assert!(
        cgroups["detail"].as_str().unwrap().starts_with("v2 with "),
        "{cgroups}"
    );
    let abi = m.landlock_abi;
    let landlock = check("landlock");
    assert_eq!(landlock["available"], true);
    assert!(
        landlock["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ABI {abi}")),
        "{landlock}"
    );
    assert_eq!(j["landlock_abi"], abi);
    for f in j["landlock_features"].as_array().unwrap() {
        let needs = f["abi"].as_u64().unwrap();
        assert_eq!(f["available"], needs <= abi as u64, "{f}");
        // Every feature dsbox would use but this kernel lacks is named in the check.
        if f["used_by_dsbox"] == true && needs > abi as u64 {
            let named = format!("{} (ABI {needs})", f["name"].as_str().unwrap());
            assert!(
                landlock["detail"].as_str().unwrap().contains(&named),
                "{named} missing from {landlock}"
            );
        }
    }
    let here = &j["tested_here"];
    // Off the VM a pure v2 host may have another landlock ABI: no tested setup then.
    if tested_setup_matching("v2", abi).is_none() {
        assert!(here.is_null(), "{here}");
        return;
    }
    assert_eq!(here["cgroup_mode"], "v2", "{j}");
    assert_eq!(here["landlock_abi"], abi);
    if m.required {
        assert!(here["kernel"].as_str().unwrap().contains("6.1"), "{here}");
        assert!(here["how"].as_str().unwrap().contains("vm-run"), "{here}");
    }
}

#[test]
fn doctor_text_says_which_kernels_and_layouts_are_tested() {
    let Some(m) = matrix() else { return };
    let out = m.dsbox(&["doctor"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("cgroups: dsbox uses v2"), "{text}");
    assert!(
        text.contains("tested kernels and cgroup layouts:"),
        "{text}"
    );
    assert!(
        text.contains("pure v2") && text.contains("hybrid"),
        "{text}"
    );
    assert!(text.contains("vm-run"), "{text}");
    let abi = m.landlock_abi;
    let verdict = match tested_setup_matching("v2", abi) {
        Some(_) => "matches the tested setup on",
        None => "matches no tested setup",
    };
    assert!(
        text.contains(&format!(
            "this host (cgroup v2, landlock ABI {abi}) {verdict}"
        )),
        "{text}"
    );
    if abi < 3 {
        let truncate = text
            .lines()
            .find(|l| l.trim_start().starts_with("ABI 3") && l.contains("truncate"))
            .unwrap_or_default();
        assert!(truncate.contains("UNAVAILABLE"), "{text}");
    }
}
