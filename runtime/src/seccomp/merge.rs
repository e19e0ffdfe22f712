//! Merge several classic-BPF seccomp programs into one. Shared with `build.rs` (included
//! there by path), so it depends on nothing but core.
//!
//! seccompiler compiles one filter per match action (EPERM for most syscalls, ENOSYS for
//! clone3). The kernel could stack two filters, but the `JoinPlan` hands a Python joiner
//! exactly one program, so we chain them: every `RET ALLOW` of a program becomes a jump to
//! the start of the next program; the last program's `RET ALLOW`s stay. The result is
//! "the first filter that does not allow decides", which for allow/errno filters equals
//! the kernel's stacking semantics.

/// One BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const ENOSYS: u32 = 38;
/// The kernel's limit on a seccomp program's length.
pub const BPF_MAXINSNS: usize = 4096;

/// Chain `programs` into one. With `x32_guard` (x86_64), a prologue first returns ENOSYS
/// for x32-ABI syscall numbers, which would otherwise slip past rules written for the
/// x86_64 numbers.
pub fn merge(programs: &[Vec<Insn>], x32_guard: bool) -> Vec<Insn> {
    let mut out = Vec::new();
    if x32_guard {
        out.extend_from_slice(&[
            Insn {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 4,
            },
            Insn {
                code: BPF_JMP_JEQ_K,
                jt: 0,
                jf: 3,
                k: AUDIT_ARCH_X86_64,
            },
            Insn {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 0,
            },
            Insn {
                code: BPF_JMP_JGE_K,
                jt: 0,
                jf: 1,
                k: X32_SYSCALL_BIT,
            },
            Insn {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: SECCOMP_RET_ERRNO | ENOSYS,
            },
        ]);
    }
    for (i, program) in programs.iter().enumerate() {
        let last = i + 1 == programs.len();
        for (idx, insn) in program.iter().enumerate() {
            if !last && insn.code == BPF_RET_K && insn.k == SECCOMP_RET_ALLOW {
                out.push(Insn {
                    code: BPF_JMP_JA,
                    jt: 0,
                    jf: 0,
                    k: (program.len() - idx - 1) as u32,
                });
            } else {
                out.push(*insn);
            }
        }
    }
    out
}

/// Serialize as the kernel's `struct sock_filter` array (little-endian, 8 bytes each).
pub fn to_bytes(program: &[Insn]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_le_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_le_bytes());
    }
    bytes
}

/// Parse a `struct sock_filter` array; `None` if the length is not a multiple of 8.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<Insn>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| Insn {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}
