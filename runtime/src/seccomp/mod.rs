//! seccomp: the default policy (runtime/seccomp/default.json, compiled by build.rs into
//! one BPF program), user policy files (`--seccomp FILE`, compiled at run time with the
//! same front end) and the raw program handed to joiners in a `JoinPlan`.

pub mod merge;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine;

use crate::syscall::{Errno, Syscall};

/// Errors loading a seccomp policy.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read seccomp policy {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("seccomp policy {} does not compile: {message}; see runtime/seccomp/default.json for the format", path.display())]
    Compile { path: PathBuf, message: String },
    #[error("seccomp policy {} is empty or longer than 4096 instructions after merging", path.display())]
    Size { path: PathBuf },
}

/// A compiled, merged BPF program, cheap to clone.
#[derive(Clone)]
pub struct BpfProgram(Arc<[libc::sock_filter]>);

impl std::fmt::Debug for BpfProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpfProgram({} instructions)", self.0.len())
    }
}

/// As `(code, jt, jf, k)` tuples: plans cross to the spawner process (process/spawner.rs)
/// and `libc::sock_filter` has no serde.
impl serde::Serialize for BpfProgram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|f| (f.code, f.jt, f.jf, f.k)))
    }
}

impl<'de> serde::Deserialize<'de> for BpfProgram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let insns: Vec<(u16, u8, u8, u32)> = serde::Deserialize::deserialize(d)?;
        Ok(Self(
            insns
                .into_iter()
                .map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
                .collect(),
        ))
    }
}

impl BpfProgram {
    fn from_insns(insns: &[merge::Insn]) -> Self {
        let filters: Vec<libc::sock_filter> = insns
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        Self(filters.into())
    }

    /// The instructions, as the kernel wants them.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.0
    }

    /// The raw `struct sock_filter` array (little-endian), base64-encoded (JoinPlan form).
    pub fn to_base64(&self) -> String {
        let insns: Vec<merge::Insn> = self
            .0
            .iter()
            .map(|f| merge::Insn {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect();
        base64::engine::general_purpose::STANDARD.encode(merge::to_bytes(&insns))
    }

    /// Install the program on the calling thread.
    pub fn apply(&self, sys: &dyn Syscall) -> Result<(), Errno> {
        sys.seccomp_set_filter(&self.0)
    }
}

static DEFAULT_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_seccomp.bpf"));

/// The built-in policy, decoded once per process.
pub fn default_program() -> BpfProgram {
    static PROGRAM: OnceLock<BpfProgram> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            // build.rs wrote whole instructions, so the length is a multiple of 8.
            let insns = merge::from_bytes(DEFAULT_BPF).unwrap_or_default();
            BpfProgram::from_insns(&insns)
        })
        .clone()
}

/// Compile a user policy file (seccompiler JSON; every filter in it applies).
pub fn compile_file(path: &Path) -> Result<BpfProgram, SeccompError> {
    let text = std::fs::read(path).map_err(|error| SeccompError::Read {
        path: path.into(),
        error,
    })?;
    compile_json(&text, path)
}

fn compile_json(text: &[u8], path: &Path) -> Result<BpfProgram, SeccompError> {
    let merged = merge::optimize(&compile_unoptimized(text, path)?);
    Ok(BpfProgram::from_insns(&merged))
}

/// seccompiler's programs for every filter of the policy, chained (see `merge`).
fn compile_unoptimized(text: &[u8], path: &Path) -> Result<Vec<merge::Insn>, SeccompError> {
    let arch: seccompiler::TargetArch =
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| SeccompError::Compile {
                path: path.into(),
                message: format!("{e:?}"),
            })?;
    let map = seccompiler::compile_from_json(text, arch).map_err(|e| SeccompError::Compile {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut names: Vec<_> = map.keys().cloned().collect();
    names.sort();
    let programs: Vec<Vec<merge::Insn>> = names
        .iter()
        .map(|n| {
            map[n]
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
    let merged = merge::merge(&programs, std::env::consts::ARCH == "x86_64");
    if programs.is_empty() || merged.len() > merge::BPF_MAXINSNS {
        return Err(SeccompError::Size { path: path.into() });
    }
    Ok(merged)
}

/// Does this kernel support seccomp filters with the errno action?
pub fn kernel_supports_filters() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    mode >= 0
        && std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
            .map(|s| s.split_whitespace().any(|a| a == "errno"))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_bpf(program: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        // A tiny classic-BPF interpreter over struct seccomp_data, enough for seccompiler's
        // output: it lets unit tests check the policy's decisions without installing it.
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let hit = match i.code {
                        0x15 => acc == i.k,
                        0x25 => acc > i.k,
                        0x35 => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                0x54 => acc &= i.k,
                0x06 => return i.k,
                other => panic!("unhandled BPF op {other:#x}"),
            }
        }
    }

    const X86_64: u32 = 0xC000_003E;
    const EPERM_RET: u32 = 0x0005_0001;
    const ENOSYS_RET: u32 = 0x0005_0026;
    const ALLOW: u32 = 0x7fff_0000;

    #[test]
    fn default_policy_blocks_the_targets_list_with_eperm() {
        let p = default_program();
        let prog = p.instructions();
        assert!(!prog.is_empty());
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_userfaultfd,
            libc::SYS_open_by_handle_at,
            libc::SYS_swapon,
            libc::SYS_reboot,
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_acct,
            libc::SYS_quotactl,
        ] {
            assert_eq!(
                run_bpf(prog, nr as u32, X86_64, [0; 6]),
                EPERM_RET,
                "syscall {nr}"
            );
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
        ] {
            assert_eq!(
                run_bpf(prog, nr as u32, X86_64, [0; 6]),
                ALLOW,
                "syscall {nr}"
            );
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_and_clone3_gets_enosys() {
        let p = default_program();
        let prog = p.instructions();
        let clone = libc::SYS_clone as u32;
        let fork_flags =
            (libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        assert_eq!(
            run_bpf(prog, clone, X86_64, [fork_flags, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run_bpf(prog, clone, X86_64, [thread_flags, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            let flags = fork_flags | flag as u64;
            assert_eq!(
                run_bpf(prog, clone, X86_64, [flags, 0, 0, 0, 0, 0]),
                EPERM_RET
            );
        }
        assert_eq!(
            run_bpf(prog, libc::SYS_clone3 as u32, X86_64, [0; 6]),
            ENOSYS_RET
        );
    }

    #[test]
    fn personality_allows_only_query_and_per_linux() {
        let p = default_program();
        let nr = libc::SYS_personality as u32;
        assert_eq!(
            run_bpf(p.instructions(), nr, X86_64, [0xffff_ffff, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run_bpf(p.instructions(), nr, X86_64, [0, 0, 0, 0, 0, 0]),
            ALLOW
        );
        // ADDR_NO_RANDOMIZE
        assert_eq!(
            run_bpf(p.instructions(), nr, X86_64, [0x0040000, 0, 0, 0, 0, 0]),
            EPERM_RET
        );
    }

    #[test]
    fn x32_syscall_numbers_are_refused() {
        let p = default_program();
        let x32_mount = libc::SYS_mount as u32 | 0x4000_0000;
        assert_eq!(
            run_bpf(p.instructions(), x32_mount, X86_64, [0; 6]),
            ENOSYS_RET
        );
    }

    #[test]
    fn user_policy_files_compile_or_fail_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("p.json");
        std::fs::write(&good, r#"{"main":{"mismatch_action":"allow","match_action":{"errno":1},"filter":[{"syscall":"getpid"}]}}"#).unwrap();
        let prog = compile_file(&good).unwrap();
        assert_eq!(
            run_bpf(prog.instructions(), libc::SYS_getpid as u32, X86_64, [0; 6]),
            EPERM_RET
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"main":{"mismatch_action":"allow","match_action":"allow","filter":[{"syscall":"no_such_call"}]}}"#).unwrap();
        let err = compile_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        assert!(compile_file(&dir.path().join("missing.json")).is_err());
    }

    #[test]
    fn base64_is_the_raw_sock_filter_array() {
        let p = default_program();
        let b = base64::engine::general_purpose::STANDARD
            .decode(p.to_base64())
            .unwrap();
        assert_eq!(b.len(), p.instructions().len() * 8);
        assert_eq!(&b[..], DEFAULT_BPF);
    }

    /// Every decision of `b` equals `a`'s over syscall numbers (native, x32, out of
    /// range) and architectures; and, for the numbers either program names (and a few
    /// others), over arguments: each single bit, all bits, and every constant either
    /// program compares with, in each argument slot.
    fn assert_same_decisions(a: &[merge::Insn], b: &[merge::Insn]) {
        let (pa, pb) = (BpfProgram::from_insns(a), BpfProgram::from_insns(b));
        let (ia, ib) = (pa.instructions(), pb.instructions());
        let mut values: Vec<u64> = vec![0, u64::MAX];
        values.extend((0..64).map(|bit| 1u64 << bit));
        for insn in a.iter().chain(b) {
            let k = u64::from(insn.k);
            values.extend([k, k << 32, k | 1, k.wrapping_sub(1), !k]);
        }
        values.sort_unstable();
        values.dedup();
        let mut numbers: Vec<u32> = (0..=470).collect();
        numbers.extend([0x4000_0000, 0x4000_0038, 0x4000_01b3, 0x7fff_ffff, u32::MAX]);
        for arch in [X86_64, 0x4000_0003, 0] {
            for &nr in &numbers {
                let zero = [0u64; 6];
                assert_eq!(run_bpf(ia, nr, arch, zero), run_bpf(ib, nr, arch, zero));
                let named = a.iter().chain(b).any(|i| i.k == nr);
                if !named && nr % 97 != 0 {
                    continue;
                }
                for slot in 0..6 {
                    for &v in &values {
                        let mut args = zero;
                        args[slot] = v;
                        assert_eq!(
                            run_bpf(ia, nr, arch, args),
                            run_bpf(ib, nr, arch, args),
                            "nr {nr} arch {arch:#x} arg{slot} = {v:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_optimised_default_policy_decides_as_seccompilers_program_at_under_half_the_length() {
        let policy = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.json"));
        let unoptimized = compile_unoptimized(&std::fs::read(policy).unwrap(), policy).unwrap();
        let optimized = merge::optimize(&unoptimized);
        // build.rs ships the same program.
        assert_eq!(
            merge::to_bytes(&optimized),
            DEFAULT_BPF,
            "build.rs and the runtime disagree"
        );
        assert!(
            optimized.len() * 2 < unoptimized.len(),
            "{} -> {} instructions",
            unoptimized.len(),
            optimized.len()
        );
        assert_same_decisions(&unoptimized, &optimized);
    }

    #[test]
    fn optimize_keeps_far_branches_in_range_and_leaves_unknown_programs_alone() {
        use merge::Insn;
        let op = |code, k| Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let (ld, ret, ja) = (|k| op(0x20, k), |k| op(0x06, k), |k| op(0x05, k));
        let jeq = |k, jt, jf| Insn {
            code: 0x15,
            jt,
            jf,
            k,
        };
        // 0: ld nr; 1: jeq 7 -> 2 else 3; 2: ja -> 305; 3: ja -> 4; 4..=303: 150
        // compares the jump cannot skip; 304: ja -> 305; 305: the tail (ld nr; jeq 7;
        // ret; ret), 303 instructions from the branch: more than its 8 bits can reach.
        let mut program = vec![ld(0), jeq(7, 0, 1), ja(302), ja(0)];
        for n in 0..150 {
            program.extend([ld(0), jeq(n % 4, 0, 0)]);
        }
        program.push(ja(0));
        program.extend([ld(0), jeq(7, 0, 1), ret(EPERM_RET), ret(ALLOW)]);
        assert_eq!(program.len(), 309);
        let optimized = merge::optimize(&program);
        assert!(optimized.len() < program.len());
        assert!(
            optimized.iter().any(|i| i.code == 0x05),
            "the far jump stays a trampoline: {optimized:?}"
        );
        assert_same_decisions(&program, &optimized);
        // An instruction it does not know (BPF_MISC TAX): unchanged.
        let mut unknown = program.clone();
        unknown[0] = op(0x07, 0);
        assert_eq!(merge::optimize(&unknown), unknown);
        assert_eq!(merge::optimize(&[]), Vec::<Insn>::new());
    }
}
