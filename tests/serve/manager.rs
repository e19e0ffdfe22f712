//! DSGym's manager API over real HTTP: shapes, status codes, ids, state, timeouts,
//! restarts, the data tree at /data.

use serde_json::json;

use crate::{Server, block_on, error, require_root, result_text, stdout};

#[test]
fn allocate_execute_stateful_cells_deallocate_and_status_counts() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let a = s.allocate().await;
        let b = s.allocate().await;
        assert!(b > a, "ids come from a counter");
        let (_, st) = s.get("/status").await;
        let ids: Vec<u64> = serde_json::from_value(st["allocated_container_ids"].clone()).unwrap();
        assert!(ids.contains(&a) && ids.contains(&b), "{st}");
        assert!(st["allocated_containers"].as_u64().unwrap() >= 2);
        assert_eq!(st["total_containers"], 48);
        assert_eq!(
            st["available_by_type"]["analysis"], st["available_containers"],
            "{st}"
        );

        // State persists across cells; each container has its own.
        s.exec(a, "x = 41").await;
        s.exec(b, "x = 'b'").await;
        let out = s.exec(a, "print('hello')\nx + 1").await;
        assert_eq!(
            out,
            vec![
                json!({"type": "stream", "name": "stdout", "text": "hello\n"}),
                json!({"type": "result", "data": {"text/plain": "42"}}),
            ]
        );
        assert_eq!(result_text(&s.exec(b, "x").await).as_deref(), Some("'b'"));
        // A DataFrame: text/plain and text/html, pandas preloaded.
        let out = s
            .exec(a, "import pandas as pd\npd.DataFrame({'v': [1, 2]})")
            .await;
        let data = &out[0]["data"];
        assert!(
            data["text/plain"].as_str().unwrap().contains('v'),
            "{out:?}"
        );
        assert!(
            data["text/html"].as_str().unwrap().contains("<table"),
            "{out:?}"
        );
        // An error item.
        let out = s.exec(a, "1 / 0").await;
        assert_eq!(out[0]["type"], "error");
        assert_eq!(out[0]["name"], "ZeroDivisionError");
        assert_eq!(out[0]["value"], "division by zero");
        assert!(out[0]["traceback"].as_array().unwrap().len() >= 2);

        // Deallocate: gone, not reusable, the id is not handed out again.
        let (status, body) = s.post_empty(&format!("/deallocate/{a}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"status": "deallocated", "container_id": a}));
        let (status, body) = s
            .post(&format!("/session/{a}/execute"), json!({"code": "x"}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("deallocated"),
            "{body}"
        );
        let (status, _) = s.post_empty(&format!("/deallocate/{a}")).await;
        assert_eq!(status, 400);
        let (_, st) = s.get("/status").await;
        let ids: Vec<u64> = serde_json::from_value(st["allocated_container_ids"].clone()).unwrap();
        assert!(!ids.contains(&a) && ids.contains(&b), "{st}");
        let c = s.allocate().await;
        assert!(c > b, "ids are never reused");
        assert!(
            error(&s.exec(c, "x").await).is_some_and(|e| e.0 == "NameError"),
            "a new container has no state of an old one"
        );
        for id in [b, c] {
            assert_eq!(s.post_empty(&format!("/deallocate/{id}")).await.0, 200);
        }
    });
}

#[test]
fn a_timeout_interrupts_then_restarts_the_kernel_like_the_reference() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let id = s.allocate().await;
        s.exec(
            id,
            "kept = 1\nopen('/workdir/f.txt', 'w').write('file stays')",
        )
        .await;
        let (status, body) = s
            .post(
                &format!("/session/{id}/execute"),
                json!({"code": "import time\ntime.sleep(30)", "timeout": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let out = body["outputs"].as_array().unwrap();
        let (name, value) = error(out).expect("an error item");
        assert_eq!(name, "TimeoutError");
        assert!(
            value.contains("restarted") && value.contains("variables are lost"),
            "{value}"
        );
        let (name, _) = error(&s.exec(id, "kept").await).expect("variables are gone");
        assert_eq!(name, "NameError");
        assert_eq!(
            result_text(&s.exec(id, "open('/workdir/f.txt').read()").await).as_deref(),
            Some("'file stays'")
        );
        let (_, h) = s.get(&format!("/session/{id}/health")).await;
        assert!(h["restarts"].as_u64().unwrap() >= 1, "{h}");
        s.post_empty(&format!("/deallocate/{id}")).await;
    });
}

#[test]
fn ready_health_restart_and_restart_status() {
    require_root!();
    // Its own server: /restart restarts every container of the server.
    let server = Server::start(|c| c.templates[0].1.pool_size = 0);
    let s = &server;
    block_on(async {
        let id = s.allocate().await;
        assert_eq!(
            s.get(&format!("/session/{id}/ready")).await,
            (200, json!({"ready": true}))
        );
        let (status, h) = s.get(&format!("/session/{id}/health")).await;
        assert_eq!(status, 200);
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["container_id"], id);
        assert_eq!(h["container_type"], "analysis");
        s.exec(id, "v = 3").await;
        let (status, r) = s.post_empty(&format!("/session/{id}/restart")).await;
        assert_eq!(
            (status, r),
            (200, json!({"status": "restarted", "container_id": id}))
        );
        assert_eq!(error(&s.exec(id, "v").await).unwrap().0, "NameError");
        let (_, rs) = s.get(&format!("/session/{id}/restart-status")).await;
        assert_eq!(rs["status"], "ready");
        assert_eq!(rs["restarting"], false);
        assert_eq!(rs["restarts"], 1);
        // /restart restarts every allocated container.
        let other = s.allocate().await;
        s.exec(id, "v = 4").await;
        s.exec(other, "w = 5").await;
        let (status, all) = s.post_empty("/restart").await;
        assert_eq!(status, 200, "{all}");
        let restarted: Vec<u64> = serde_json::from_value(all["restarted"].clone()).unwrap();
        assert!(
            restarted.contains(&id) && restarted.contains(&other),
            "{all}"
        );
        assert_eq!(error(&s.exec(id, "v").await).unwrap().0, "NameError");
        assert_eq!(error(&s.exec(other, "w").await).unwrap().0, "NameError");
        for i in [id, other] {
            s.post_empty(&format!("/deallocate/{i}")).await;
        }
    });
    server.stop();
}

#[test]
fn the_data_tree_is_at_slash_data_read_only() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let id = s.allocate().await;
        let out = s.exec(id, "import os\nsorted(os.listdir('/data'))").await;
        assert_eq!(result_text(&out).as_deref(), Some("['fixture', 'other']"));
        let out = s
            .exec(
                id,
                "import pandas as pd\nint(pd.read_csv('/data/fixture/numbers.csv')['y'].sum())",
            )
            .await;
        assert_eq!(result_text(&out).as_deref(), Some("12"));
        let out = s
            .exec(id, "open('/data/fixture/numbers.csv', 'a').write('7,8\\n')")
            .await;
        let (name, _) = error(&out).expect("writing to /data fails");
        assert!(name == "OSError" || name == "PermissionError", "{name}");
        // /submission is writable, as in the reference's containers.
        let out = s
            .exec(
                id,
                "open('/submission/submission.csv', 'w').write('id\\n')\nprint('ok')",
            )
            .await;
        assert_eq!(stdout(&out), "ok\n");
        s.post_empty(&format!("/deallocate/{id}")).await;
    });
}

#[test]
fn an_unknown_container_type_is_400_and_a_known_one_works() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let (status, body) = s.post_empty("/allocate?container_type=gpu").await;
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().unwrap().contains("`analysis`"),
            "{body}"
        );
        let (status, body) = s.post_empty("/allocate?container_type=analysis").await;
        assert_eq!(status, 200, "{body}");
        let id = body["container_id"].as_u64().unwrap();
        assert_eq!(s.post_empty(&format!("/deallocate/{id}")).await.0, 200);
    });
}
