//! Compiles runtime/seccomp/default.json with seccompiler's JSON front end, so a bad
//! policy fails the build, and writes the merged BPF program to $OUT_DIR.

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
    let file = std::fs::File::open(policy).unwrap_or_else(|e| panic!("{policy}: {e}"));
    let map = seccompiler::compile_from_json(file, target)
        .unwrap_or_else(|e| panic!("{policy} does not compile: {e}"));
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
    let merged = merge::merge(&programs, arch == "x86_64");
    assert!(
        merged.len() <= merge::BPF_MAXINSNS,
        "{policy}: merged program has {} instructions (kernel limit {})",
        merged.len(),
        merge::BPF_MAXINSNS
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("default_seccomp.bpf");
    std::fs::write(&out, merge::to_bytes(&merged)).expect("write default_seccomp.bpf");
}
