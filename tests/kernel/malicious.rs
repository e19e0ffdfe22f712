//! A malicious or broken kernel: a fake peer on the other end of the channel. The client
//! must reject it without panicking and without large allocations.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dsbox_kernel::{
    CellStatus, ClientConfig, KernelClient, KernelControl, KernelError, LostReason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{reset_peak_rss, rss};

#[derive(Default)]
struct CountingControl(AtomicUsize);

impl KernelControl for CountingControl {
    fn interrupt(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

const HELLO: &[u8] = br#"{"type":"hello","protocol":1,"pid":4242,"python":"3.11.2"}"#;

/// A connected client and the fake kernel's end (hello already sent).
async fn fake_kernel() -> (KernelClient, UnixStream, Arc<CountingControl>) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(&frame(HELLO)).await.unwrap();
    let control = Arc::new(CountingControl::default());
    let config = ClientConfig {
        interrupt_grace: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let client = KernelClient::connect(ours, control.clone(), config)
        .await
        .unwrap();
    assert_eq!(client.info().pid, 4242);
    (client, theirs, control)
}

/// Read one request from the fake kernel's end.
async fn read_request(peer: &mut UnixStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).await.unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

async fn answer_with(bytes: Vec<u8>) -> dsbox_kernel::CellResult {
    let (mut client, mut peer, _) = fake_kernel().await;
    let task = tokio::spawn(async move {
        let req = read_request(&mut peer).await;
        assert_eq!(req["type"], "execute");
        let _ = peer.write_all(&bytes).await;
        // The peer closes after its answer (a partial frame then means the kernel died).
    });
    let cell = client
        .execute("1+1", Duration::from_secs(10))
        .await
        .unwrap();
    task.await.unwrap();
    // A lost kernel refuses further cells.
    assert!(matches!(
        client.execute("1+1", Duration::from_secs(1)).await,
        Err(KernelError::Lost { .. })
    ));
    cell
}

#[tokio::test]
async fn a_4_gib_length_prefix_is_rejected_without_allocating_it() {
    reset_peak_rss();
    let (before, _) = rss();
    let cell = answer_with(u32::MAX.to_be_bytes().to_vec()).await;
    let (_, peak) = rss();
    match &cell.status {
        CellStatus::KernelLost(LostReason::Protocol(e)) => {
            assert!(e.contains("4294967295 bytes"), "{e}")
        }
        other => panic!("expected a protocol loss, got {other:?}"),
    }
    assert_eq!(cell.error().map(|e| e.0), Some("KernelProtocolError"));
    assert!(
        peak - before < 32 << 20,
        "peak RSS grew by {} MiB",
        (peak - before) >> 20
    );
}

#[tokio::test]
async fn invalid_json_unknown_types_and_invalid_fields_are_rejected() {
    for (body, what) in [
        (&b"{not json"[..], "invalid JSON"),
        (br#"{"type":"format_disk","id":1}"#, "unknown type"),
        (
            br#"{"type":"stream","id":1,"name":"stdout","text":"x","extra":true}"#,
            "unknown field",
        ),
        (
            br#"{"type":"stream","id":1,"name":"stdin","text":"x"}"#,
            "bad stream",
        ),
        (
            br#"{"type":"display_data","id":1,"data":{"image/png":"<script>"}}"#,
            "bad base64",
        ),
        (
            br#"{"type":"result","id":1,"data":{"text plain":"2"}}"#,
            "bad MIME type",
        ),
        (
            br#"{"type":"hello","protocol":1,"pid":1,"python":"x"}"#,
            "hello mid-cell",
        ),
        (b"\xff\xfe\x00", "not UTF-8"),
    ] {
        let cell = answer_with(frame(body)).await;
        assert!(
            matches!(cell.status, CellStatus::KernelLost(LostReason::Protocol(_))),
            "{what}: {cell:?}"
        );
    }
}

#[tokio::test]
async fn a_kernel_closing_mid_frame_is_reported_as_dead() {
    let mut bytes = frame(br#"{"type":"stream","id":1,"name":"stdout","text":"partial output\n"}"#);
    bytes.extend_from_slice(&100u32.to_be_bytes());
    bytes.extend_from_slice(b"{\"type\":");
    let cell = answer_with(bytes).await;
    assert_eq!(cell.status, CellStatus::KernelLost(LostReason::Exited));
    assert_eq!(
        cell.stdout(),
        "partial output\n",
        "what arrived before is kept"
    );
    assert_eq!(cell.error().map(|e| e.0), Some("DeadKernelError"));
}

#[tokio::test]
async fn a_silent_kernel_is_interrupted_then_given_up() {
    let (mut client, mut peer, control) = fake_kernel().await;
    let task = tokio::spawn(async move {
        read_request(&mut peer).await;
        // Items of another cell are ignored; then silence.
        peer.write_all(&frame(
            br#"{"type":"stream","id":99,"name":"stdout","text":"stale"}"#,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        peer
    });
    let cell = client
        .execute("while True: pass", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(control.0.load(Ordering::SeqCst), 1, "interrupted once");
    assert_eq!(
        cell.status,
        CellStatus::KernelLost(LostReason::Unresponsive)
    );
    assert_eq!(cell.stdout(), "", "stale items dropped");
    assert_eq!(cell.error().map(|e| e.0), Some("TimeoutError"));
    task.abort();
}

#[tokio::test]
async fn a_kernel_that_comes_back_after_the_interrupt_keeps_its_state() {
    let (mut client, mut peer, control) = fake_kernel().await;
    let task = tokio::spawn(async move {
        let req = read_request(&mut peer).await;
        let id = req["id"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let err = format!(
            r#"{{"type":"error","id":{id},"name":"KeyboardInterrupt","value":"","traceback":["Traceback (most recent call last):","KeyboardInterrupt"]}}"#
        );
        let done = format!(
            r#"{{"type":"done","id":{id},"status":"interrupted","execution_count":1,"timing":{{"run_us":400000}}}}"#
        );
        peer.write_all(&frame(err.as_bytes())).await.unwrap();
        peer.write_all(&frame(done.as_bytes())).await.unwrap();
        peer
    });
    let cell = client
        .execute("slow()", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(control.0.load(Ordering::SeqCst), 1);
    assert_eq!(cell.status, CellStatus::TimedOut);
    let (name, _, tb) = cell.error().unwrap();
    assert_eq!(name, "TimeoutError");
    assert!(tb.last().unwrap().starts_with("TimeoutError:"), "{tb:?}");
    assert!(client.lost().is_none());
    drop(task.await.unwrap());
}

#[tokio::test]
async fn a_bad_hello_is_refused() {
    for (hello, expect) in [
        (
            &br#"{"type":"hello","protocol":99,"pid":1,"python":"3"}"#[..],
            "protocol 99",
        ),
        (
            br#"{"type":"done","id":1,"status":"ok","execution_count":1,"timing":{"run_us":1}}"#,
            "before hello",
        ),
        (
            br#"{"type":"join_error","step":"setns","errno":1,"detail":""}"#,
            "step `setns`",
        ),
    ] {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&frame(hello)).await.unwrap();
        let err = KernelClient::connect(
            ours,
            Arc::new(CountingControl::default()),
            ClientConfig::default(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let err = KernelClient::connect(
        ours,
        Arc::new(CountingControl::default()),
        ClientConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, KernelError::ClosedBeforeHello), "{err}");
}
