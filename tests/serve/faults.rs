//! Faults: each happens while another client works, and the server answers that client
//! (and the faulty one, with a clear result) throughout.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Server, block_on, error, eventually, require_root, result_text};

#[test]
fn a_client_that_disconnects_mid_execute_cancels_nothing() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let id = s.allocate().await;
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let gone = impatient
            .post(s.url(&format!("/session/{id}/execute")))
            .json(&json!({"code": "import time\ntime.sleep(1.5)\ndone = 'finished'"}))
            .send()
            .await;
        assert!(gone.is_err(), "the client gave up mid-cell");
        // Others are served meanwhile.
        let other = s.allocate().await;
        assert_eq!(
            result_text(&s.exec(other, "1 + 1").await).as_deref(),
            Some("2")
        );
        // The cell ran to its end; the next cell waited for it and sees its state.
        let t = Instant::now();
        assert_eq!(
            result_text(&s.exec(id, "done").await).as_deref(),
            Some("'finished'")
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        for i in [id, other] {
            assert_eq!(s.post_empty(&format!("/deallocate/{i}")).await.0, 200);
        }
    });
}

#[test]
fn a_kernel_killed_from_outside_is_replaced_and_a_killed_sandbox_says_what_to_do() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let id = s.allocate().await;
        let other = s.allocate().await;
        s.exec(id, "x = 1").await;
        let slot = s.app.containers.get(&id).unwrap();
        let pid = slot.kernel_pid();
        assert!(pid > 0);
        // SAFETY: kill(2) of the kernel process this test's server started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let out = s.exec(id, "x").await;
        let (name, value) = error(&out).expect("an error item");
        assert_eq!(name, "DeadKernelError", "{out:?}");
        assert!(value.contains("SIGKILL"), "{value}");
        assert_eq!(
            result_text(&s.exec(id, "2 + 2").await).as_deref(),
            Some("4")
        );
        assert_eq!(
            result_text(&s.exec(other, "1 + 1").await).as_deref(),
            Some("2")
        );

        // Now the whole sandbox: its init (and so everything in it).
        // SAFETY: kill(2) of the sandbox's init, a child of this test process.
        unsafe { libc::kill(slot.init_pid, libc::SIGKILL) };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = s.exec(id, "1").await;
        let (name, value) = error(&out).expect("an error item");
        assert!(
            name == "DeadKernelError" || name == "SandboxError",
            "{out:?}"
        );
        let out = s.exec(id, "1").await;
        let (name, value2) = error(&out).expect("still an error item");
        assert_eq!(name, "SandboxError", "{value} / {value2}");
        assert!(
            value2.contains("deallocate it and allocate a new one"),
            "{value2}"
        );
        // The server and the other client are fine; the dead container deallocates.
        assert_eq!(
            result_text(&s.exec(other, "1 + 1").await).as_deref(),
            Some("2")
        );
        assert_eq!(s.get("/health").await.0, 200);
        for i in [id, other] {
            assert_eq!(s.post_empty(&format!("/deallocate/{i}")).await.0, 200);
        }
    });
}

#[test]
fn a_full_server_refuses_at_once_with_retry_after_and_serves_the_others() {
    require_root!();
    let s = Server::start(|c| {
        c.manager.max_sandboxes = 2;
        c.manager.acquire_timeout = Duration::from_millis(200);
        c.templates[0].1.pool_size = 0;
    });
    block_on(async {
        let a = s.allocate().await;
        let b = s.allocate().await;
        let t = Instant::now();
        let r = s.http.post(s.url("/allocate")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.headers().get("retry-after").is_some());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["kind"], "full");
        assert!(
            body["error"].as_str().unwrap().contains("max_sandboxes"),
            "{body}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no hang: {:?}",
            t.elapsed()
        );
        // The v1 APIs say 429.
        let r = s
            .http
            .post(s.url("/v1/sandboxes"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        let r = s
            .http
            .post(s.url("/v1/envs"))
            .json(&json!({"task_id": "starter/top-region"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        // Those inside are served; the status says there is no room.
        assert_eq!(result_text(&s.exec(a, "1 + 1").await).as_deref(), Some("2"));
        let (_, st) = s.get("/status").await;
        assert_eq!(st["available_containers"], 0, "{st}");
        // Room again after a deallocate.
        s.post_empty(&format!("/deallocate/{a}")).await;
        let c = s.allocate().await;
        for i in [b, c] {
            s.post_empty(&format!("/deallocate/{i}")).await;
        }
    });
    s.stop();
}

#[test]
fn a_kernel_stuck_in_c_code_is_killed_after_its_timeout_while_others_are_served() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let id = s.allocate().await;
        let other = s.allocate().await;
        s.exec(id, "before = 1").await;
        // PBKDF2 with a billion rounds runs in OpenSSL's C code, which never returns to
        // Python to see the SIGINT: the kernel must be killed and replaced.
        let stuck = tokio::spawn({
            let url = s.url(&format!("/session/{id}/execute"));
            let http = s.http.clone();
            async move {
                let t = Instant::now();
                let r = http
                    .post(url)
                    .json(&json!({"code": "import hashlib\nhashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 10**9)", "timeout": 1}))
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                    t.elapsed(),
                )
            }
        });
        let mut served = 0;
        while !stuck.is_finished() {
            let t = Instant::now();
            assert_eq!(
                result_text(&s.exec(other, "1 + 1").await).as_deref(),
                Some("2")
            );
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            served >= 3,
            "the other client was served while the kernel was stuck"
        );
        let (status, body, took) = stuck.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let (name, value) = error(body["outputs"].as_array().unwrap()).expect("an error item");
        assert_eq!(name, "TimeoutError");
        assert!(value.contains("restarted"), "{value}");
        assert!(took < Duration::from_secs(20), "{took:?}");
        assert_eq!(error(&s.exec(id, "before").await).unwrap().0, "NameError");
        assert_eq!(
            result_text(&s.exec(id, "1 + 1").await).as_deref(),
            Some("2")
        );
        eventually("metrics count the timeout", Duration::from_secs(1), || true).await;
        let m = s
            .http
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("status=\"timed_out_restarted\""), "{m}");
        assert!(m.contains("dsbox_execute_seconds_bucket{le="), "{m}");
        for i in [id, other] {
            s.post_empty(&format!("/deallocate/{i}")).await;
        }
    });
}
