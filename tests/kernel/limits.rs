//! Timeouts, crashes and output floods.

use std::time::{Duration, Instant};

use dsbox_kernel::{CellStatus, ClientConfig, LostReason, StandaloneConfig, StandaloneKernel};

use crate::{kernel, reset_peak_rss, rss, run, test_python};

async fn kernel_with_grace(grace: Duration) -> StandaloneKernel {
    let mut config = StandaloneConfig::new(test_python());
    config.client = ClientConfig {
        interrupt_grace: grace,
        ..ClientConfig::default()
    };
    StandaloneKernel::start(config).await.expect("start kernel")
}

#[tokio::test]
async fn a_timeout_interrupts_the_cell_and_keeps_state() {
    let mut k = kernel().await;
    run(&mut k, "x = 'kept'").await;
    let started = Instant::now();
    let cell = k
        .execute(
            "import time\nprint('before')\ntime.sleep(60)",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(cell.status, CellStatus::TimedOut, "{cell:?}");
    assert_eq!(cell.stdout(), "before\n");
    let (name, value, tb) = cell.error().expect("a TimeoutError item");
    assert_eq!(name, "TimeoutError");
    assert!(
        value.contains("timed out after 1 s") && value.contains("state is kept"),
        "{value}"
    );
    assert!(
        tb.iter().any(|l| l.contains("time.sleep(60)")),
        "where it was interrupted: {tb:?}"
    );
    assert!(!cell.needs_restart());
    assert_eq!(run(&mut k, "x").await.result_text(), Some("'kept'"));
    assert_eq!(k.restarts(), 0);
}

#[tokio::test]
async fn a_cell_that_ignores_sigint_is_killed_and_reported() {
    let mut k = kernel_with_grace(Duration::from_millis(500)).await;
    run(&mut k, "x = 1").await;
    let pid = k.pid().unwrap();
    let cell = k
        .execute(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(
        cell.status,
        CellStatus::KernelLost(LostReason::Unresponsive),
        "{cell:?}"
    );
    let (name, value, _) = cell.error().unwrap();
    assert_eq!(name, "TimeoutError");
    assert!(
        value.contains("restarted") && value.contains("variables are lost"),
        "{value}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the stuck kernel process is gone"
    );
    assert_eq!(k.restarts(), 1);
    let cell = run(&mut k, "x").await;
    assert_eq!(
        cell.error().map(|e| e.0),
        Some("NameError"),
        "a fresh kernel: {cell:?}"
    );
}

#[tokio::test]
async fn os_exit_in_a_cell_gives_a_clear_error_and_a_fresh_kernel() {
    let mut k = kernel().await;
    let cell = run(&mut k, "print('bye')\nimport os\nos._exit(1)").await;
    assert_eq!(
        cell.status,
        CellStatus::KernelLost(LostReason::Exited),
        "{cell:?}"
    );
    let (name, value, _) = cell.error().unwrap();
    assert_eq!(name, "DeadKernelError");
    assert!(
        value.contains("exited with code 1") && value.contains("restarted"),
        "{value}"
    );
    assert_eq!(run(&mut k, "1 + 1").await.result_text(), Some("2"));
}

#[tokio::test]
async fn a_segfault_in_a_cell_gives_a_clear_error_and_a_fresh_kernel() {
    let mut k = kernel().await;
    let cell = run(&mut k, "import ctypes\nctypes.string_at(0)").await;
    assert_eq!(
        cell.status,
        CellStatus::KernelLost(LostReason::Exited),
        "{cell:?}"
    );
    let (_, value, _) = cell.error().unwrap();
    assert!(value.contains("signal 11 (SIGSEGV)"), "{value}");
    assert_eq!(run(&mut k, "2 + 2").await.result_text(), Some("4"));
}

#[tokio::test]
async fn an_output_flood_is_capped_and_the_runtime_memory_stays_bounded() {
    // Peak RSS is per process: measured beside other tests of this binary it would count
    // their memory too, so the measuring run is a process of its own (this test again).
    // (Blocking here is fine: nothing else runs on this test's runtime yet.)
    if dsbox_tests::rerun_alone(
        "limits::an_output_flood_is_capped_and_the_runtime_memory_stays_bounded",
        "DSBOX_TEST_OUTPUT_FLOOD_ALONE",
    ) {
        return;
    }
    let mut k = kernel().await;
    reset_peak_rss();
    let (before, _) = rss();
    // 2 GiB through Python-level writes, 512 MiB through fd 1, 64 MiB of stderr.
    let code = r#"
import os, sys
chunk = ("y" * 1023 + "\n") * 1024
for i in range(2048):
    sys.stdout.write(chunk)
raw = chunk.encode()
for i in range(512):
    os.write(1, raw)
for i in range(64):
    sys.stderr.write(chunk)
print("the end")
"#;
    let cell = k.execute(code, Duration::from_secs(300)).await.unwrap();
    let (_, peak) = rss();
    assert_eq!(cell.status, CellStatus::Ok, "{:?}", cell.status);
    let out = cell.stdout();
    assert!(out.len() < 70 << 10, "stdout kept {} bytes", out.len());
    assert!(out.starts_with("yyyy"));
    assert!(out.ends_with("the end\n"), "the tail is kept");
    let cut = cell.truncation.stdout_bytes_cut;
    let total: u64 = (2048 + 512) << 20;
    assert!(cut > total - (64 << 10) && cut <= total + 8, "cut {cut}");
    assert!(
        out.contains(&format!("[... {cut} bytes of stdout cut by dsbox")),
        "{}",
        &out[30_000..34_000.min(out.len())]
    );
    assert!(cell.truncation.stderr_bytes_cut > (63 << 20));
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 96 << 20,
        "runtime peak RSS grew by {} MiB while 2.5 GiB flowed",
        growth >> 20
    );
}

#[tokio::test]
async fn sigint_while_idle_is_ignored_and_a_sigint_storm_never_corrupts_the_channel() {
    let mut k = kernel().await;
    run(&mut k, "x = 'kept'").await;
    let pid = nix::unistd::Pid::from_raw(k.pid().unwrap() as i32);
    for _ in 0..20 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        run(&mut k, "x").await.result_text(),
        Some("'kept'"),
        "idle SIGINTs ignored"
    );

    for round in 0..6 {
        let storm = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..100 {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let cell = k
            .execute(
                // Small writes, and 300 KB ones whose frames exceed the socket buffer so
                // that sends block and signals land inside them.
                "import sys\nbig = 'z' * 300_000\nfor i in range(10**8):\n    print(i)\n    sys.stderr.write('e\\n')\n    if i % 50 == 0:\n        print(big)",
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        storm.await.unwrap();
        assert_eq!(
            cell.status,
            CellStatus::Interrupted,
            "round {round}: {:?}",
            cell.error()
        );
        assert_eq!(cell.error().map(|e| e.0), Some("KeyboardInterrupt"));
        assert!(
            cell.stdout().starts_with("0\nzzz"),
            "{}",
            &cell.stdout()[..20]
        );
        assert_eq!(run(&mut k, "x").await.result_text(), Some("'kept'"));
    }
    assert_eq!(k.restarts(), 0, "the channel was never corrupted");
}

/// The kernel run as a script (`python dsbox_kernel.py --channel-fd N`) on a raw socket.
fn script_kernel() -> (std::process::Child, std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kernel/python/dsbox_kernel.py"
    );
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(test_python());
    cmd.arg(script).arg("--channel-fd").arg(fd.to_string());
    // SAFETY: runs between fork and exec; fcntl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    // A wedged channel fails the test instead of hanging it.
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (child, ours)
}

/// Read frames until `done`; every frame must parse.
fn read_until_done(
    sock: &mut std::os::unix::net::UnixStream,
    reader: &mut dsbox_kernel::protocol::FrameReader,
) -> Vec<dsbox_kernel::protocol::KernelMessage> {
    use dsbox_kernel::protocol::KernelMessage;
    use std::io::Read;
    let mut out = Vec::new();
    loop {
        while let Some(body) = reader.next_frame().expect("a well-formed frame") {
            let msg = KernelMessage::parse(body).expect("a valid message");
            let done = matches!(msg, KernelMessage::Done { .. });
            out.push(msg);
            if done {
                return out;
            }
        }
        let n = sock
            .read(reader.read_space())
            .expect("the kernel keeps sending frames until done");
        assert!(n > 0, "kernel closed the channel");
        reader.advance(n);
    }
}

#[test]
fn interrupts_landing_inside_a_blocked_send_never_corrupt_frames() {
    use dsbox_kernel::protocol::{
        DoneStatus, FrameReader, KernelMessage, MAX_KERNEL_FRAME, Request, encode_request,
    };
    use std::io::Write;
    let (mut child, mut sock) = script_kernel();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut reader = FrameReader::new(MAX_KERNEL_FRAME);
    let hello = read_until_done_or_hello(&mut sock, &mut reader);
    assert!(matches!(hello, KernelMessage::Hello { .. }), "{hello:?}");
    for id in 1..=3u64 {
        let code = "big = 'q' * 1_000_000\nwhile True:\n    print(big)";
        sock.write_all(&encode_request(&Request::Execute { id, code }).unwrap())
            .unwrap();
        // Do not read: the kernel fills the socket buffer and blocks inside sendall.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..30 {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        let msgs = read_until_done(&mut sock, &mut reader);
        match msgs.last() {
            Some(KernelMessage::Done { status, .. }) => {
                assert_eq!(*status, DoneStatus::Interrupted)
            }
            other => panic!("{other:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_until_done_or_hello(
    sock: &mut std::os::unix::net::UnixStream,
    reader: &mut dsbox_kernel::protocol::FrameReader,
) -> dsbox_kernel::protocol::KernelMessage {
    use std::io::Read;
    loop {
        if let Some(body) = reader.next_frame().unwrap() {
            return dsbox_kernel::protocol::KernelMessage::parse(body).unwrap();
        }
        let n = sock.read(reader.read_space()).unwrap();
        assert!(n > 0, "kernel closed the channel before hello");
        reader.advance(n);
    }
}
