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
