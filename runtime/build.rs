//! Compiles runtime/seccomp/default.json with seccompiler's JSON front end, so a bad
//! policy fails the build, and writes the merged, optimised BPF program to $OUT_DIR.

#[path = "src/seccomp/merge.rs"]
#[allow(dead_code)]
mod merge;

use std::path::PathBuf;

fn main() {
    let policy = "seccomp/default.json";
    println!("cargo:rerun-if-changed={policy}");
    println!("cargo:rerun-if-changed=src/seccomp/merge.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let target: seccompiler::TargetArch = arch
        .as_str()
        .try_into()
        .unwrap_or_else(|e| panic!("seccomp: unsupported target arch {arch}: {e:?}"));
    let mut text = std::fs::read_to_string(policy).unwrap_or_else(|e| panic!("{policy}: {e}"));
    // The policy is written with x86_64 names. Some of them (iopl, ioperm, the obsolete
    // module calls, ...) do not exist on other architectures: there, drop those rules
    // (nothing to block) and say so; on x86_64 any unknown name fails the build.
    let map = loop {
        match seccompiler::compile_from_json(text.as_bytes(), target) {
            Ok(map) => break map,
            Err(e) => {
                let msg = e.to_string();
                let unknown = msg
                    .split("Invalid syscall name: ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned);
                match unknown {
                    Some(name) if arch != "x86_64" => {
                        println!(
                            "cargo:warning=seccomp policy: `{name}` does not exist on {arch}; rule dropped"
                        );
                        let mut value: serde_json::Value =
                            serde_json::from_str(&text).expect("policy is JSON");
                        for filter in value
                            .as_object_mut()
                            .into_iter()
                            .flat_map(|m| m.values_mut())
                        {
                            if let Some(rules) =
                                filter.get_mut("filter").and_then(|f| f.as_array_mut())
                            {
                                rules.retain(|r| r["syscall"] != name.as_str());
                            }
                        }
                        text = value.to_string();
                    }
                    _ => panic!("{policy} does not compile: {msg}"),
                }
            }
        }
    };
    let mut names: Vec<_> = map.keys().cloned().collect();
    names.sort();
    let programs: Vec<Vec<merge::Insn>> = names
        .iter()
        .map(|name| {
            map[name]
                .iter()
                .map(|f| merge::Insn {
                    code: f.code,
                    jt: f.jt,
                    jf: f.jf,
                    k: f.k,
                })
                .collect()
        })
        .collect();
    let merged = merge::optimize(&merge::merge(&programs, arch == "x86_64"));
    assert!(
        merged.len() <= merge::BPF_MAXINSNS,
        "{policy}: merged program has {} instructions (kernel limit {})",
        merged.len(),
        merge::BPF_MAXINSNS
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("default_seccomp.bpf");
    std::fs::write(&out, merge::to_bytes(&merged)).expect("write default_seccomp.bpf");
}
