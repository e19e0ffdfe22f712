//! The router in-process (`oneshot`), on a server with no templates: the OpenAPI snapshot,
//! JSON errors for every kind of bad input, the bearer token. Everything that needs real
//! sandboxes is in tests/serve/.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::api::{AppState, openapi, router};
use crate::app::App;
use crate::config::ServeConfig;

fn app_with(f: impl FnOnce(&mut ServeConfig)) -> Arc<App> {
    let mut cfg = ServeConfig::new(Vec::new());
    cfg.idle_timeout = None;
    f(&mut cfg);
    App::start(cfg).expect("an app without templates starts")
}

async fn call(app: &Arc<App>, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = router(AppState(app.clone())).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

fn req(method: Method, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

/// An error response: 4xx, a JSON body whose `error` names the problem.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, kind: &str, says: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "error {msg:?} should mention {says:?}");
    assert_eq!(body["detail"], body["error"], "FastAPI-style `detail` too");
}

#[test]
fn the_openapi_document_matches_its_snapshot() {
    let doc = openapi().to_pretty_json().unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("DSBOX_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        snapshot == doc,
        "the API changed: review the difference, then accept it with `DSBOX_UPDATE_SNAPSHOTS=1 cargo test -p dsbox-serve openapi` ({})",
        path.display()
    );
    let v: Value = serde_json::from_str(&doc).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/health",
        "/allocate",
        "/deallocate/{id}",
        "/session/{id}/execute",
        "/session/{id}/ready",
        "/session/{id}/health",
        "/session/{id}/restart",
        "/session/{id}/restart-status",
        "/restart",
        "/status",
        "/v1/envs",
        "/v1/envs/batch",
        "/v1/envs/{id}/step",
        "/v1/envs/step",
        "/v1/envs/{id}",
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/execute",
        "/v1/sandboxes/{id}/files",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} is documented");
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = app_with(|_| {});
    let doc: Value = serde_json::to_value(openapi()).unwrap();
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let uri = path
                .replace("{id}", "7")
                .replace("/files", "/files?path=/workdir/x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _, body) = call(&app, req(m.clone(), &uri, "{}")).await;
            assert_ne!(body["kind"], "no_route", "{method} {path}: {body}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            n += 1;
        }
    }
    assert!(n >= 25, "{n} operations");
}

#[tokio::test]
async fn health_and_status_answer_with_the_references_keys() {
    let app = app_with(|c| c.manager.max_sandboxes = 7);
    let (status, _, body) = call(&app, req(Method::GET, "/health", Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    let (status, _, body) = call(&app, req(Method::GET, "/status", Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "allocated_container_ids",
            "allocated_containers",
            "available_by_type",
            "available_containers",
            "total_containers"
        ]
    );
    assert_eq!(body["total_containers"], 7);
    assert_eq!(body["available_containers"], 7);
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let app = app_with(|_| {});
    for uri in [
        "/session/1/execute",
        "/v1/sandboxes",
        "/v1/envs",
        "/v1/envs/x/step",
    ] {
        let (status, _, body) = call(&app, req(Method::POST, uri, "{'code': 1}")).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "bad_json",
            "not valid JSON",
        );
    }
    let (status, _, body) = call(&app, req(Method::POST, "/v1/envs", "")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_json", "empty");
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422_naming_the_field() {
    let app = app_with(|_| {});
    let (status, _, body) = call(
        &app,
        req(Method::POST, "/session/1/execute", r#"{"code": 5}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_json",
        "code: invalid type: integer `5`, expected a string",
    );
    let (status, _, body) = call(
        &app,
        req(Method::POST, "/v1/sandboxes", r#"{"memroy": "1G"}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_json",
        "unknown field `memroy`",
    );
    let (status, _, body) = call(
        &app,
        req(
            Method::POST,
            "/v1/envs",
            r#"{"task_id": "starter/top-region", "max_turns": "ten"}"#,
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_json",
        "max_turns",
    );
    // A path parameter of the wrong type.
    let (status, _, body) = call(
        &app,
        req(Method::POST, "/session/abc/execute", r#"{"code": "1"}"#),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request", "abc");
    // A bad timeout.
    let (status, _, body) = call(
        &app,
        req(
            Method::POST,
            "/v1/envs",
            r#"{"task_id": "starter/top-region", "cell_timeout": -3}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn unknown_ids_are_400_in_the_manager_api_and_404_in_v1() {
    let app = app_with(|_| {});
    for (method, uri) in [
        (Method::POST, "/session/42/execute"),
        (Method::POST, "/deallocate/42"),
        (Method::GET, "/session/42/ready"),
        (Method::GET, "/session/42/health"),
        (Method::POST, "/session/42/restart"),
        (Method::GET, "/session/42/restart-status"),
    ] {
        let (status, _, body) = call(&app, req(method, uri, r#"{"code": "1"}"#)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "not_allocated",
            "container 42 is not allocated",
        );
    }
    for (method, uri, what) in [
        (Method::POST, "/v1/sandboxes/sb-9/execute", "sandbox `sb-9`"),
        (Method::GET, "/v1/sandboxes/sb-9", "sandbox `sb-9`"),
        (Method::DELETE, "/v1/sandboxes/sb-9", "sandbox `sb-9`"),
        (
            Method::PUT,
            "/v1/sandboxes/sb-9/files?path=/workdir/a",
            "sandbox `sb-9`",
        ),
        (
            Method::GET,
            "/v1/sandboxes/sb-9/files?path=/workdir/a",
            "sandbox `sb-9`",
        ),
        (Method::POST, "/v1/envs/env-9/step", "env `env-9`"),
        (Method::GET, "/v1/envs/env-9", "env `env-9`"),
        (Method::DELETE, "/v1/envs/env-9", "env `env-9`"),
    ] {
        let body = if uri.ends_with("step") {
            r#"{"action": "x"}"#
        } else {
            r#"{"code": "1"}"#
        };
        let (status, _, resp) = call(&app, req(method, uri, body)).await;
        assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found", what);
    }
    let (status, _, body) = call(
        &app,
        req(
            Method::POST,
            "/v1/envs",
            r#"{"task_id": "starter/no-such-task"}"#,
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "starter/no-such-task",
    );
}

#[tokio::test]
async fn unknown_routes_methods_and_container_types_say_so() {
    let app = app_with(|_| {});
    let (status, _, body) = call(&app, req(Method::GET, "/nope", Body::empty())).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "no_route",
        "/openapi.json",
    );
    let (status, _, body) = call(&app, req(Method::GET, "/allocate", Body::empty())).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET is not allowed on /allocate",
    );
    let (status, _, body) = call(
        &app,
        req(Method::POST, "/allocate?container_type=gpu", Body::empty()),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "unknown_type",
        "`gpu`",
    );
}

#[tokio::test]
async fn huge_bodies_are_413_with_a_json_error() {
    let app = app_with(|c| {
        c.max_body = 1024;
        c.max_upload = 4096;
    });
    let code = "x".repeat(10_000);
    let big = serde_json::to_string(&json!({"code": code})).unwrap();
    for uri in [
        "/session/1/execute",
        "/v1/sandboxes/sb-1/execute",
        "/v1/envs",
    ] {
        let (status, _, body) = call(&app, req(Method::POST, uri, big.clone())).await;
        assert_error(
            status,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_json",
            "--max-body",
        );
    }
    // Uploads have their own (larger) limit.
    let (status, _, body) = call(
        &app,
        req(
            Method::PUT,
            "/v1/sandboxes/sb-1/files?path=/workdir/a",
            vec![0u8; 3000],
        ),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "sb-1");
    let (status, _, body) = call(
        &app,
        req(
            Method::PUT,
            "/v1/sandboxes/sb-1/files?path=/workdir/a",
            vec![0u8; 5000],
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "bad_json",
        "--max-upload",
    );
}

#[tokio::test]
async fn a_token_guards_everything_but_health() {
    let app = app_with(|c| c.token = Some("s3cret".into()));
    let (status, _, body) = call(&app, req(Method::GET, "/health", Body::empty())).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    for token in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
    ] {
        let mut r = req(Method::GET, "/status", Body::empty());
        if let Some(t) = token {
            r.headers_mut()
                .insert(header::AUTHORIZATION, t.parse().unwrap());
        }
        let (status, headers, body) = call(&app, r).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Bearer",
        );
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    let mut r = req(Method::GET, "/status", Body::empty());
    r.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    let (status, _, _) = call(&app, r).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn env_records_may_not_choose_host_paths_or_leave_the_data_tree() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/suite")).unwrap();
    std::fs::write(dir.path().join("data/suite/a.csv"), "x\n1\n").unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("data/suite/etc")).unwrap();
    let root = dir.path().to_path_buf();
    let app = app_with(move |c| c.data_root = Some(root));
    let cases = [
        (
            json!({"question": "q", "data": [{"path": "/data/suite/a.csv", "host": "/etc/shadow"}]}),
            "`host` is chosen by the server",
        ),
        (
            json!({"question": "q", "data": ["/data/../etc/passwd"]}),
            "without `..`",
        ),
        (
            json!({"question": "q", "data": ["/etc/passwd"]}),
            "under /data",
        ),
        (
            json!({"question": "q", "data": ["/data/suite/etc/passwd"]}),
            "outside the server's data tree",
        ),
        (
            json!({"question": "q", "answer": "1", "metric": {"name": "no_such_metric"}}),
            "cannot be scored",
        ),
        (
            json!({"question": "q", "bogus": 1}),
            "unknown field `bogus`",
        ),
    ];
    for (task, says) in cases {
        let (status, _, body) = call(
            &app,
            req(Method::POST, "/v1/envs", json!({"task": task}).to_string()),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request", says);
    }
    // Sandbox-API data paths get the same checks.
    for (data, says) in [
        (json!(["../etc/passwd"]), "without `..`"),
        (json!(["/etc/passwd"]), "without `..`"),
        (
            json!(["suite/etc/passwd"]),
            "outside the server's data tree",
        ),
        (json!(["suite/missing.csv"]), "does not exist"),
        (
            json!([{"source": "suite/a.csv", "destination": "/etc/a.csv"}]),
            "below /data",
        ),
    ] {
        let (status, _, body) = call(
            &app,
            req(
                Method::POST,
                "/v1/sandboxes",
                json!({"data": data}).to_string(),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request", says);
    }
}
