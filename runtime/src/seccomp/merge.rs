//! Merge several classic-BPF seccomp programs into one, and shrink the result
//! ([`optimize`]). Shared with `build.rs` (included there by path), so it depends on
//! nothing but core.
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

const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JSET_K: u16 = 0x45;

/// An instruction with absolute jump targets (indexes into the program).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Load(u32),
    And(u32),
    Jump(usize),
    Branch {
        code: u16,
        k: u32,
        taken: usize,
        not_taken: usize,
    },
    Return(u32),
}

impl Node {
    fn targets(self, at: usize) -> [Option<usize>; 2] {
        match self {
            Node::Load(_) | Node::And(_) => [Some(at + 1), None],
            Node::Jump(t) => [Some(t), None],
            Node::Branch {
                taken, not_taken, ..
            } => [Some(taken), Some(not_taken)],
            Node::Return(_) => [None, None],
        }
    }
}

fn decode(program: &[Insn]) -> Option<Vec<Node>> {
    let len = program.len();
    let to = |at: usize, off: u32| {
        let t = at + 1 + off as usize;
        (t < len).then_some(t)
    };
    program
        .iter()
        .enumerate()
        .map(|(at, i)| {
            // A load or `and` must have an instruction after it.
            let falls_through = at + 1 < len;
            Some(match i.code {
                BPF_LD_W_ABS if falls_through => Node::Load(i.k),
                BPF_ALU_AND_K if falls_through => Node::And(i.k),
                BPF_JMP_JA => Node::Jump(to(at, i.k)?),
                BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => Node::Branch {
                    code: i.code,
                    k: i.k,
                    taken: to(at, i.jt.into())?,
                    not_taken: to(at, i.jf.into())?,
                },
                BPF_RET_K => Node::Return(i.k),
                _ => return None,
            })
        })
        .collect()
}

/// Shrink a program without changing what it returns for any input.
///
/// seccompiler's output is verbose: a `ja` trampoline around every rule, and for each
/// argument check a load of the high half masked with 0 and compared with 0. The kernel
/// converts and JIT-compiles every instruction each time a filter is installed (twice
/// per sandbox with a kernel), and a syscall runs through the whole chain. Three rewrites, repeated until none applies:
/// * a compare with 0 right after `and 0` always holds: it becomes a jump;
/// * a load or `and` whose result nothing reads is dropped;
/// * a jump to a jump goes to the end of the chain (a conditional one only while the
///   offset fits its 8 bits), and a jump to a return is that return;
///
/// then whatever cannot be reached is dropped. A program with an instruction this does
/// not know comes back unchanged. Written by hand: no crate optimises classic BPF.
pub fn optimize(program: &[Insn]) -> Vec<Insn> {
    let Some(mut nodes) = decode(program) else {
        return program.to_vec();
    };
    if nodes.is_empty() {
        return Vec::new();
    }
    let len = nodes.len();
    loop {
        let before = nodes.clone();
        // Which instructions are jumped to (not just fallen into).
        let mut jumped_to = vec![false; len];
        for node in &nodes {
            match *node {
                Node::Jump(t) => jumped_to[t] = true,
                Node::Branch {
                    taken, not_taken, ..
                } => {
                    jumped_to[taken] = true;
                    jumped_to[not_taken] = true;
                }
                _ => {}
            }
        }
        // `and 0` leaves 0 in A: a following `jeq 0` (reached only from it) always holds.
        for at in 0..len.saturating_sub(1) {
            if let (
                Node::And(0),
                Node::Branch {
                    code: BPF_JMP_JEQ_K,
                    k: 0,
                    taken,
                    ..
                },
            ) = (nodes[at], nodes[at + 1])
                && !jumped_to[at + 1]
            {
                nodes[at + 1] = Node::Jump(taken);
            }
        }
        // Liveness of A, backwards (every jump goes forwards).
        let mut live = vec![false; len];
        for at in (0..len).rev() {
            live[at] = match nodes[at] {
                Node::Load(_) | Node::Return(_) => false,
                Node::And(_) | Node::Branch { .. } => true,
                Node::Jump(t) => live[t],
            };
        }
        for at in 0..len {
            if matches!(nodes[at], Node::Load(_) | Node::And(_)) && !live[at + 1] {
                nodes[at] = Node::Jump(at + 1);
            }
        }
        // Thread jumps.
        let end_of = |mut t: usize, from: usize, limit: Option<usize>| {
            while let Node::Jump(next) = nodes[t] {
                if limit.is_some_and(|l| next - from - 1 > l) {
                    break;
                }
                t = next;
            }
            t
        };
        let mut threaded = nodes.clone();
        for (at, node) in threaded.iter_mut().enumerate() {
            match *node {
                Node::Jump(t) => {
                    let t = end_of(t, at, None);
                    *node = match nodes[t] {
                        Node::Return(k) => Node::Return(k),
                        _ => Node::Jump(t),
                    };
                }
                Node::Branch {
                    code,
                    k,
                    taken,
                    not_taken,
                } => {
                    *node = Node::Branch {
                        code,
                        k,
                        taken: end_of(taken, at, Some(u8::MAX.into())),
                        not_taken: end_of(not_taken, at, Some(u8::MAX.into())),
                    };
                }
                _ => {}
            }
        }
        nodes = threaded;
        if nodes == before {
            break;
        }
    }
    // Keep what is reachable from the start, minus jumps to the next kept instruction.
    let mut reachable = vec![false; len];
    reachable[0] = true;
    for at in 0..len {
        if reachable[at] {
            for t in nodes[at].targets(at).into_iter().flatten() {
                reachable[t] = true;
            }
        }
    }
    let mut keep = reachable.clone();
    // Backwards, so that a run of such jumps all go.
    let mut next_kept = len;
    for at in (0..len).rev() {
        if keep[at] && nodes[at] == Node::Jump(next_kept) {
            keep[at] = false;
        }
        if keep[at] {
            next_kept = at;
        }
    }
    // Where each instruction's place goes: a dropped one to the next kept one.
    let mut new_index = vec![0usize; len + 1];
    let mut count = 0;
    for at in 0..len {
        new_index[at] = count;
        if keep[at] {
            count += 1;
        }
    }
    new_index[len] = count;
    let resolve = |t: usize| {
        let mut t = t;
        while t < len && !keep[t] {
            t = match nodes[t] {
                Node::Jump(next) => next,
                _ => t + 1,
            };
        }
        new_index[t]
    };
    let mut out = Vec::with_capacity(count);
    for at in (0..len).filter(|&at| keep[at]) {
        let here = new_index[at];
        let offset = |t: usize| resolve(t) - here - 1;
        out.push(match nodes[at] {
            Node::Load(k) => Insn {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k,
            },
            Node::And(k) => Insn {
                code: BPF_ALU_AND_K,
                jt: 0,
                jf: 0,
                k,
            },
            Node::Jump(t) => Insn {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: offset(t) as u32,
            },
            Node::Branch {
                code,
                k,
                taken,
                not_taken,
            } => {
                let (jt, jf) = (offset(taken), offset(not_taken));
                let (Ok(jt), Ok(jf)) = (u8::try_from(jt), u8::try_from(jf)) else {
                    // Cannot happen (offsets only shrink), but never emit a wrong one.
                    return program.to_vec();
                };
                Insn { code, jt, jf, k }
            }
            Node::Return(k) => Insn {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k,
            },
        });
    }
    out
}
