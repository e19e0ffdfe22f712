//! dsbox-probe: runs inside a sandbox and reports what it can see and do, as JSON (like
//! youki's runtimetest). Subcommands:
//!
//! * `report [--read P]... [--write P]... [--connect HOST:PORT]... [--dns NAME]...
//!   [--signal PID]...` — identity, capabilities, no_new_privs, seccomp mode, open fds,
//!   environment, visible pids, network interfaces, results of dangerous syscalls, and
//!   the result of each requested read/write/connect/lookup/signal ("ok" or an errno name).
//! * `forkbomb HOLD_MS` — fork until fork fails; children sleep HOLD_MS. Prints the count.
//! * `membomb` — allocate and touch memory until killed.
//! * `fill PATH` — write to PATH until a write fails. Prints bytes written and the errno.
//! * `spin` — busy loop forever.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::EACCES => "EACCES".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EFBIG => "EFBIG".into(),
        libc::EXDEV => "EXDEV".into(),
        libc::EBADF => "EBADF".into(),
        libc::EFAULT => "EFAULT".into(),
        other => format!("errno {other}"),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn io_result<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e
            .raw_os_error()
            .map(errno_name)
            .unwrap_or_else(|| e.to_string()),
    }
}

fn syscall_result(rc: libc::c_long) -> String {
    if rc < 0 {
        errno_name(last_errno())
    } else {
        "ok".into()
    }
}

fn status_fields() -> BTreeMap<String, String> {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn dangerous_syscalls() -> Value {
    let mut out = serde_json::Map::new();
    // SAFETY: raw syscalls with null or zeroed arguments; each is expected to be refused,
    // and none of them dereferences memory we do not own.
    unsafe {
        out.insert(
            "mount".into(),
            syscall_result(libc::mount(
                c"none".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ) as libc::c_long)
            .into(),
        );
        out.insert(
            "unshare_user".into(),
            syscall_result(libc::unshare(libc::CLONE_NEWUSER) as libc::c_long).into(),
        );
        out.insert(
            "unshare_net".into(),
            syscall_result(libc::unshare(libc::CLONE_NEWNET) as libc::c_long).into(),
        );
        out.insert(
            "ptrace_attach_1".into(),
            syscall_result(libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0)).into(),
        );
        out.insert(
            "ptrace_traceme".into(),
            syscall_result(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)).into(),
        );
        let attr = [0u8; 128];
        out.insert(
            "bpf".into(),
            syscall_result(libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len())).into(),
        );
        out.insert(
            "keyctl".into(),
            syscall_result(libc::syscall(libc::SYS_keyctl, 0, -3, 0)).into(),
        );
        let mut pattr = [0u8; 128];
        pattr[4..8].copy_from_slice(&128u32.to_le_bytes());
        out.insert(
            "perf_event_open".into(),
            syscall_result(libc::syscall(
                libc::SYS_perf_event_open,
                pattr.as_ptr(),
                0,
                -1,
                -1,
                0,
            ))
            .into(),
        );
        out.insert(
            "clone3".into(),
            syscall_result(libc::syscall(
                libc::SYS_clone3,
                std::ptr::null::<u8>(),
                0usize,
            ))
            .into(),
        );
        out.insert(
            "personality_no_aslr".into(),
            syscall_result(libc::personality(0x0040000) as libc::c_long).into(),
        );
        out.insert(
            "chroot".into(),
            syscall_result(libc::chroot(c"/tmp".as_ptr()) as libc::c_long).into(),
        );
        out.insert(
            "open_by_handle_at".into(),
            syscall_result(libc::syscall(
                libc::SYS_open_by_handle_at,
                -100,
                std::ptr::null::<u8>(),
                0,
            ))
            .into(),
        );
        out.insert(
            "setuid_0".into(),
            syscall_result(libc::syscall(libc::SYS_setuid, 0)).into(),
        );
    }
    Value::Object(out)
}

fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect()
}

fn report(args: &[String]) -> Value {
    let mut reads = serde_json::Map::new();
    let mut writes = serde_json::Map::new();
    let mut connects = serde_json::Map::new();
    let mut dns = serde_json::Map::new();
    let mut signals = serde_json::Map::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else { break };
        match flag.as_str() {
            "--read" => {
                let r = std::fs::read(v).map(|_| ()).or_else(|e| {
                    if e.raw_os_error() == Some(libc::EISDIR) {
                        std::fs::read_dir(v).map(|_| ())
                    } else {
                        Err(e)
                    }
                });
                reads.insert(v.clone(), io_result(r).into());
            }
            "--write" => {
                let r = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(v)
                    .and_then(|mut f| f.write_all(b"probe\n"));
                writes.insert(v.clone(), io_result(r).into());
            }
            "--connect" => {
                let r = v
                    .parse::<std::net::SocketAddr>()
                    .map_err(std::io::Error::other)
                    .and_then(|a| {
                        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                    });
                connects.insert(v.clone(), io_result(r).into());
            }
            "--dns" => {
                use std::net::ToSocketAddrs;
                let r = (v.as_str(), 80).to_socket_addrs().map(|a| a.count());
                dns.insert(v.clone(), io_result(r).into());
            }
            "--signal" => {
                let pid: i32 = v.parse().unwrap_or(0);
                // SAFETY: kill(2) with signal 0 only checks permission/existence.
                let rc = unsafe { libc::kill(pid, 0) };
                signals.insert(v.clone(), syscall_result(rc as libc::c_long).into());
            }
            _ => {}
        }
    }
    let status = status_fields();
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut hostname = [0u8; 256];
    // SAFETY: hostname is a valid buffer of its length.
    unsafe { libc::gethostname(hostname.as_mut_ptr().cast(), hostname.len()) };
    let hostname = String::from_utf8_lossy(hostname.split(|&b| b == 0).next().unwrap_or_default())
        .into_owned();
    // SAFETY: plain getters.
    let (uid, gid, pid) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    json!({
        "uid": uid, "gid": gid, "pid": pid, "hostname": hostname, "cwd": cwd,
        "groups": status.get("Groups").cloned().unwrap_or_default(),
        "cap_inh": status.get("CapInh"), "cap_prm": status.get("CapPrm"),
        "cap_eff": status.get("CapEff"), "cap_bnd": status.get("CapBnd"),
        "cap_amb": status.get("CapAmb"),
        "no_new_privs": status.get("NoNewPrivs"), "seccomp": status.get("Seccomp"),
        "fds": fds, "pids": pids, "env": env, "interfaces": interfaces(),
        "syscalls": dangerous_syscalls(),
        "reads": reads, "writes": writes, "connects": connects, "dns": dns, "signals": signals,
    })
}

fn forkbomb(hold_ms: u64) -> Value {
    let mut forks = 0u64;
    let mut errno = 0;
    loop {
        // SAFETY: fork; the child only sleeps and exits.
        match unsafe { libc::fork() } {
            -1 => {
                errno = last_errno();
                break;
            }
            0 => {
                std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                // SAFETY: leave without running the parent's atexit handlers.
                unsafe { libc::_exit(0) }
            }
            _ => forks += 1,
        }
        if forks > 100_000 {
            break;
        }
    }
    json!({"forks": forks, "errno": errno_name(errno)})
}

fn membomb() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut v = vec![0u8; 16 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        chunks.push(v);
    }
}

fn fill(path: &str) -> Value {
    let mut written = 0u64;
    let buf = vec![7u8; 1 << 20];
    let r: std::io::Result<()> = std::fs::File::create(path).and_then(|mut f| {
        loop {
            match f.write(&buf) {
                Ok(0) => return Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
                Ok(n) => written += n as u64,
                Err(e) => return Err(e),
            }
        }
    });
    let errno = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    json!({"written": written, "errno": errno_name(errno)})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("report") => report(&args[1..]),
        Some("forkbomb") => forkbomb(args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2000)),
        Some("membomb") => membomb(),
        Some("fill") => fill(args.get(1).map(String::as_str).unwrap_or("/tmp/fill")),
        Some("spin") => loop {
            std::hint::spin_loop();
        },
        _ => {
            eprintln!("usage: dsbox-probe report|forkbomb|membomb|fill|spin ...");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
