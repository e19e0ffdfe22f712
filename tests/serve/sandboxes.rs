//! The sandbox API (limits, data mounts, files, delete) and operations (metrics, idle
//! reclaim, shutdown destroying everything).

use std::time::Duration;

use serde_json::json;

use crate::{Server, block_on, eventually, require_root, result_text};

async fn execute(s: &Server, id: &str, code: &str) -> serde_json::Value {
    let (status, v) = s
        .post(
            &format!("/v1/sandboxes/{id}/execute"),
            json!({"code": code}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn a_sandbox_gets_its_limits_and_data_and_moves_files() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let (status, v) = s
            .post(
                "/v1/sandboxes",
                json!({"data": ["fixture/numbers.csv", {"source": "fixture", "destination": "/data/in"}]}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(v["template"], "analysis");
        assert_eq!(v["limits"]["memory"], 1u64 << 30);
        let out = execute(
            s,
            &id,
            "import os\n(sorted(os.listdir('/data')), open('/data/fixture/numbers.csv').read()[:3], os.listdir('/data/in'))",
        )
        .await;
        assert_eq!(
            result_text(out["outputs"].as_array().unwrap()).as_deref(),
            Some("(['fixture', 'in'], 'x,y', ['numbers.csv'])")
        );
        assert_eq!(out["status"], "ok");
        // Files in and out of the scratch dirs.
        let r = s
            .http
            .put(s.url(&format!(
                "/v1/sandboxes/{id}/files?path=/workdir/sub/in.bin"
            )))
            .body(vec![0u8, 1, 2, 255])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let out = execute(
            s,
            &id,
            "d = open('/workdir/sub/in.bin', 'rb').read()\nopen('/tmp/out.txt', 'w').write(str(list(d)))",
        )
        .await;
        assert_eq!(out["status"], "ok", "{out}");
        let r = s
            .http
            .get(s.url(&format!("/v1/sandboxes/{id}/files?path=/tmp/out.txt")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "[0, 1, 2, 255]");
        for (path, status) in [
            ("/etc/passwd", 400),
            ("/workdir/../etc/passwd", 400),
            ("relative.txt", 400),
            ("/workdir/missing.txt", 404),
        ] {
            let (got, body) = s
                .get(&format!("/v1/sandboxes/{id}/files?path={path}"))
                .await;
            assert_eq!(got, status, "{path}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        // A timeout keeps the state here (dsbox's semantics).
        execute(s, &id, "kept = 'yes'").await;
        let (_, v) = s
            .post(
                &format!("/v1/sandboxes/{id}/execute"),
                json!({"code": "import time\ntime.sleep(30)", "timeout": 0.5}),
            )
            .await;
        assert_eq!(v["status"], "timed_out", "{v}");
        let out = execute(s, &id, "kept").await;
        assert_eq!(
            result_text(out["outputs"].as_array().unwrap()).as_deref(),
            Some("'yes'")
        );
        assert_eq!(s.delete(&format!("/v1/sandboxes/{id}")).await.0, 200);
        let (status, v) = s
            .post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1"}))
            .await;
        assert_eq!(status, 404);
        assert!(v["error"].as_str().unwrap().contains("deleted"), "{v}");
    });
}

#[test]
fn limits_stay_within_the_caps_and_other_limits_get_their_own_template() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        for (body, says) in [
            (json!({"memory": "1T"}), "cap"),
            (json!({"memory": "lots"}), "cannot read"),
            (json!({"pids": 5}), "between 16"),
            (json!({"cpus": -1.0}), "between 0.01"),
            (json!({"template": "gpu"}), "unknown container type"),
        ] {
            let (status, v) = s.post("/v1/sandboxes", body.clone()).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(says), "{body}: {v}");
        }
        let (status, v) = s
            .post("/v1/sandboxes", json!({"memory": "256M", "pids": 64}))
            .await;
        assert_eq!(status, 201, "{v}");
        let id = v["id"].as_str().unwrap();
        // The limit holds: 400 MiB do not fit in 256 MiB; the OOM killer ends the
        // kernel (only this sandbox's), the error says so, and a new kernel takes over.
        let out = execute(s, id, "b = bytearray(400 << 20)").await;
        let err = &out["outputs"][0];
        assert_eq!(err["name"], "DeadKernelError", "{out}");
        assert!(err["value"].as_str().unwrap().contains("256 MiB"), "{out}");
        let out = execute(s, id, "1 + 1").await;
        assert_eq!(
            result_text(out["outputs"].as_array().unwrap()).as_deref(),
            Some("2")
        );
        s.delete(&format!("/v1/sandboxes/{id}")).await;
    });
}

#[test]
fn idle_sandboxes_are_reclaimed_and_metrics_count_them() {
    require_root!();
    let s = Server::start(|c| {
        c.idle_timeout = Some(Duration::from_millis(600));
        c.templates[0].1.pool_size = 0;
    });
    block_on(async {
        let id = s.allocate().await;
        let (status, v) = s.post("/v1/sandboxes", json!({})).await;
        assert_eq!(status, 201, "{v}");
        let sb = v["id"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let (status, v) = s
            .post(&format!("/session/{id}/execute"), json!({"code": "1"}))
            .await;
        assert_eq!(status, 400);
        assert!(v["error"].as_str().unwrap().contains("idle"), "{v}");
        let (status, v) = s.get(&format!("/v1/sandboxes/{sb}")).await;
        assert_eq!(status, 404);
        assert!(v["error"].as_str().unwrap().contains("idle"), "{v}");
        let app = s.app.clone();
        eventually(
            "the reclaimed sandboxes are destroyed",
            Duration::from_secs(10),
            || app.manager.live() == 0,
        )
        .await;
        let m = s
            .http
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains("dsbox_reclaimed_total{api=\"manager\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("dsbox_reclaimed_total{api=\"sandbox\"} 1"),
            "{m}"
        );
        assert!(m.contains("dsbox_live_sandboxes 0"), "{m}");
        assert!(
            m.contains("dsbox_errors_total{kind=\"not_allocated\"}"),
            "{m}"
        );
        assert!(
            m.contains("dsbox_pool_ready{template=\"analysis\"} 0"),
            "{m}"
        );
    });
    s.stop();
}

#[test]
fn shutdown_destroys_every_sandbox_and_pool() {
    require_root!();
    let s = Server::start(|_| {});
    let app = s.app.clone();
    let template = app.template(None).unwrap().1;
    block_on(async {
        assert!(template.wait_pool(2, Duration::from_secs(30)).await);
        let id = s.allocate().await;
        s.post("/v1/sandboxes", json!({})).await;
        s.post("/v1/envs", json!({"task_id": "starter/top-region"}))
            .await;
        // A cell that would run for a long time: shutdown does not wait for it.
        let busy = {
            let http = s.http.clone();
            let url = s.url(&format!("/session/{id}/execute"));
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({"code": "import time\nwhile True: time.sleep(1)"}))
                    .send()
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(app.manager.live() >= 4, "{}", app.manager.live());
        drop(busy); // detached: shutdown must not wait for it
    });
    let started = std::time::Instant::now();
    s.stop();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.manager.live(), 0, "nothing outlives the server");
    assert!(app.containers.is_empty() && app.sandboxes.is_empty() && app.envs.is_empty());
    assert_eq!(template.stats().pool_ready, 0);
}
