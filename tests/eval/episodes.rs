//! Full episodes: the OpenAI client talking real HTTP to the fake server, the react and
//! tools scaffolds, and code running in cold sandboxes. Each test scripts the model's
//! replies and checks the protocol, the retries and the errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsbox_agent::episode::{DiscardArtifacts, EpisodeContext, EpisodeOutcome};
use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::model::{ChatRequest, Message, ModelJudge, Role};
use dsbox_agent::protocol::NO_ACTION_MESSAGE;
use dsbox_agent::sandbox::SandboxFactory;
use dsbox_agent::scaffold::{React, Scaffold, Tools};
use dsbox_agent::{
    EndReason, EpisodeSettings, Model, ModelError, OpenAiConfig, OpenAiModel, run_episode,
};
use dsbox_tasks::{Judge, JudgeRequest, Prompts, Task};
use serde_json::json;

use crate::{factory, scratch, starter_suite};

fn client(server: &FakeServer) -> OpenAiModel {
    let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
    cfg.backoff_base = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.max_retries = 3;
    cfg.request_timeout = Duration::from_secs(20);
    OpenAiModel::new(cfg).expect("client")
}

fn settings() -> EpisodeSettings {
    EpisodeSettings {
        cell_timeout: Duration::from_secs(60),
        episode_budget: Some(Duration::from_secs(120)),
        ..EpisodeSettings::default()
    }
}

fn task(dir: &std::path::Path, id: &str) -> (Task, dsbox_tasks::RenderedPrompt) {
    let suite = starter_suite(dir);
    let task = suite.task(id).expect("starter task").clone();
    let prompt = Prompts::builtin()
        .render(&task, &suite.def)
        .expect("prompt");
    (task, prompt)
}

async fn episode_with(
    model: &dyn Model,
    scaffold: &dyn Scaffold,
    settings: &EpisodeSettings,
    task: &Task,
    prompt: &dsbox_tasks::RenderedPrompt,
) -> EpisodeOutcome {
    let factory = factory();
    let ctx = EpisodeContext {
        model,
        factory: factory.as_ref(),
        scaffold,
        settings,
        artifacts: &DiscardArtifacts,
    };
    let out = run_episode(&ctx, task, prompt, 0, 0).await;
    assert!(
        factory.live().is_empty(),
        "the episode released its sandbox"
    );
    out
}

async fn episode(server: &FakeServer, id: &str) -> EpisodeOutcome {
    let dir = scratch();
    let (task, prompt) = task(dir.path(), id);
    episode_with(&client(server), &React, &settings(), &task, &prompt).await
}

fn raw(text: &str) -> FakeReply {
    FakeReply::Raw {
        content: text.into(),
        finish_reason: "stop".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tags_and_no_code_get_the_fixed_message_and_replies_are_cut() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::queue([
            FakeReply::text("Let me think about the data first."),
            FakeReply::text("<python>print(1)</pyhton>"),
            // Text after the first </python> is cut off (the raw reply keeps it: no stop).
            raw("<python>print(6 * 7)</python> and then <answer>99</answer>"),
            // The server drops the stop sequence; the client puts it back.
            FakeReply::text("<answer>42</answer>"),
        ]),
    )
    .await
    .unwrap();
    let out = episode(&server, "starter/busy-days").await;
    let t = &out.trajectory;
    assert_eq!(t.end_reason, EndReason::Answered, "{:?}", t.error);
    assert_eq!(t.prediction.as_deref(), Some("42"));
    assert_eq!(t.turns, 4);
    assert_eq!(t.cells.len(), 1);
    let c: Vec<(Role, &str)> = t
        .conversation
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(c[0].0, Role::System);
    assert_eq!(c[1].0, Role::User);
    assert_eq!(
        c[2],
        (Role::Assistant, "Let me think about the data first.")
    );
    assert_eq!(c[3], (Role::User, NO_ACTION_MESSAGE));
    assert_eq!(c[4], (Role::Assistant, "<python>print(1)</pyhton>"));
    assert_eq!(c[5], (Role::User, NO_ACTION_MESSAGE));
    assert_eq!(c[6], (Role::Assistant, "<python>print(6 * 7)</python>"));
    assert_eq!(
        c[7],
        (Role::User, "\n<information>[stdout] 42\n</information>\n")
    );
    assert_eq!(c[8], (Role::Assistant, "<answer>42</answer>"));
    assert_eq!(c.len(), 9);
    // Every request asked the server to stop at the first closing tag.
    for r in server.requests() {
        assert_eq!(r.stop(), vec!["</python>", "</answer>"]);
    }
    // Usage from the server is summed over the four replies.
    assert!(t.tokens.prompt_tokens > 0 && t.tokens.completion_tokens > 0);
    assert_eq!(
        t.tokens.total_tokens,
        t.tokens.prompt_tokens + t.tokens.completion_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_in_a_fence_runs_and_errors_come_back_cleaned() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::queue([
            FakeReply::text("<python>\n```python\nx = 5\nprint(x * 2)\n```\n</python>"),
            FakeReply::text("<python>1 / 0</python>"),
            FakeReply::text("<answer>10</answer>"),
        ]),
    )
    .await
    .unwrap();
    let out = episode(&server, "starter/busy-days").await;
    let t = &out.trajectory;
    assert_eq!(
        t.conversation[3].content,
        "\n<information>[stdout] 10\n</information>\n"
    );
    let err = &t.conversation[5].content;
    assert!(
        err.starts_with("\n<information>ZeroDivisionError: division by zero\n"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "ANSI colours are removed: {err:?}");
    assert_eq!(t.cells[1].status, "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_answers_stops_at_max_turns_without_running_the_last_code() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| FakeReply::text("<python>print('still working')</python>")),
    )
    .await
    .unwrap();
    let dir = scratch();
    let (task, prompt) = task(dir.path(), "starter/busy-days");
    let s = EpisodeSettings {
        max_turns: 4,
        ..settings()
    };
    let out = episode_with(&client(&server), &React, &s, &task, &prompt).await;
    let t = &out.trajectory;
    assert_eq!(t.end_reason, EndReason::MaxTurns);
    assert_eq!(t.prediction, None);
    assert_eq!(t.turns, 4);
    assert_eq!(server.request_count(), 4);
    assert_eq!(t.cells.len(), 3, "the 4th reply's code is not executed");
    assert_eq!(t.conversation.last().unwrap().role, Role::Assistant);
    assert_eq!(t.error_kind.as_deref(), Some("no-answer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried_after_retry_after() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::queue([
            FakeReply::retry_after(429, "1"),
            FakeReply::text("<answer>153</answer>"),
        ]),
    )
    .await
    .unwrap();
    let model = client(&server);
    let started = Instant::now();
    let c = model
        .complete(&ChatRequest {
            messages: vec![Message::user("hi")],
            ..ChatRequest::default()
        })
        .await
        .expect("retried to success");
    assert_eq!(c.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured ({:?})",
        started.elapsed()
    );
    assert_eq!(c.text, "<answer>153</answer>");
    assert_eq!(model.stats().retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_reported_when_they_persist() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::queue([
            FakeReply::status(500),
            FakeReply::status(502),
            FakeReply::status(503),
            FakeReply::text("<answer>153</answer>"),
        ]),
    )
    .await
    .unwrap();
    let out = episode(&server, "starter/busy-days").await;
    assert_eq!(out.trajectory.end_reason, EndReason::Answered);
    assert_eq!(server.request_count(), 4);

    // Always 500: the episode ends with a model error after 1 + 3 attempts; not fatal.
    server.set_script(Script::handler(|_| FakeReply::status(500)));
    let before = server.request_count();
    let out = episode(&server, "starter/busy-days").await;
    let t = &out.trajectory;
    assert_eq!(t.end_reason, EndReason::ModelError);
    assert_eq!(t.error_kind.as_deref(), Some("http-status"));
    let err = t.error.as_deref().unwrap();
    assert!(err.contains("HTTP 500 after 4 attempt(s)"), "{err}");
    assert!(out.fatal.is_none(), "a 500 does not stop the run");
    assert_eq!(server.request_count() - before, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_out() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| {
            FakeReply::delayed(
                Duration::from_secs(10),
                FakeReply::text("<answer>1</answer>"),
            )
        }),
    )
    .await
    .unwrap();
    let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
    cfg.request_timeout = Duration::from_millis(500);
    let model = OpenAiModel::new(cfg).unwrap();
    let dir = scratch();
    let (task, prompt) = task(dir.path(), "starter/busy-days");
    let started = Instant::now();
    let out = episode_with(&model, &React, &settings(), &task, &prompt).await;
    let t = &out.trajectory;
    assert_eq!(t.end_reason, EndReason::ModelError);
    assert_eq!(t.error_kind.as_deref(), Some("model-timeout"));
    assert!(
        t.error
            .as_deref()
            .unwrap()
            .contains("did not answer within 500ms"),
        "{:?}",
        t.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.request_count(), 1, "timeouts are not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_response_is_retried() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::queue([
            FakeReply::CloseMidResponse,
            FakeReply::text("<answer>7</answer>"),
        ]),
    )
    .await
    .unwrap();
    let model = client(&server);
    let req = ChatRequest {
        messages: vec![Message::user("hi")],
        ..ChatRequest::default()
    };
    let c = model.complete(&req).await.expect("retried");
    assert_eq!((c.attempts, c.text.as_str()), (2, "<answer>7</answer>"));
    server.set_script(Script::handler(|_| FakeReply::CloseMidResponse));
    let err = model.complete(&req).await.unwrap_err();
    assert!(
        matches!(err, ModelError::Connection { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&server.base_url()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_wrong_key_and_unknown_model_are_named() {
    let mut cfg = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
    cfg.backoff_base = Duration::from_millis(10);
    let err = OpenAiModel::new(cfg)
        .unwrap()
        .preflight()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Unreachable { attempts: 1, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("http://127.0.0.1:1/v1") && text.contains("--base-url"),
        "{text}"
    );
    assert!(err.is_fatal());

    let server = FakeServer::start(
        FakeConfig {
            models: vec!["fake-model".into(), "other-model".into()],
            api_key: Some("sk-right".into()),
        },
        Script::handler(|_| FakeReply::text("OK")),
    )
    .await
    .unwrap();
    let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
    cfg.api_key = Some("sk-wrong".into());
    cfg.api_key_env = "MY_KEY".into();
    let err = OpenAiModel::new(cfg)
        .unwrap()
        .preflight()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("$MY_KEY"), "{err}");

    let mut cfg = OpenAiConfig::new(server.base_url(), "no-such-model");
    cfg.api_key = Some("sk-right".into());
    let err = OpenAiModel::new(cfg)
        .unwrap()
        .preflight()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not know model `no-such-model`")
            && text.contains("fake-model, other-model"),
        "{text}"
    );
    let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
    cfg.api_key = Some("sk-right".into());
    OpenAiModel::new(cfg)
        .unwrap()
        .preflight()
        .await
        .expect("the right key works");
    let sent = server.requests().last().unwrap().clone();
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-right"));
    assert_eq!(sent.body["max_tokens"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_scaffold_runs_python_calls_and_ends_with_the_answer_tool() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|r| {
            assert!(r.has_tools(), "tools are offered");
            match r.assistant_turns() {
                0 => FakeReply::tool_call(
                    "python",
                    json!({"code": "import pandas as pd\nv = pd.read_csv('/data/starter/visits.csv')\nprint(int((v['visits'] > 1000).sum()))"}),
                ),
                1 => FakeReply::tool_call("sql", json!({"query": "select 1"})),
                _ => {
                    let last = r.messages().last().unwrap().clone();
                    assert_eq!(last["role"], "tool");
                    FakeReply::tool_call("answer", json!({"answer": "153"}))
                }
            }
        }),
    )
    .await
    .unwrap();
    let dir = scratch();
    let (task, prompt) = task(dir.path(), "starter/busy-days");
    let out = episode_with(&client(&server), &Tools, &settings(), &task, &prompt).await;
    let t = &out.trajectory;
    assert_eq!(t.end_reason, EndReason::Answered, "{:?}", t.error);
    assert_eq!(t.prediction.as_deref(), Some("153"));
    let tool_msgs: Vec<&Message> = t
        .conversation
        .iter()
        .filter(|m| m.role == Role::Tool)
        .collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[0].content, "[stdout] 153\n");
    assert!(tool_msgs[1].content.contains("there is no tool `sql`"));
    assert!(
        tool_msgs[0]
            .tool_call_id
            .as_deref()
            .unwrap()
            .starts_with("call_")
    );
    // The second request carried the assistant's tool call and the tool's result.
    let second = &server.requests()[1];
    let msgs = second.messages();
    assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "python");
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], msgs[2]["tool_calls"][0]["id"]);
    assert!(second.body.get("stop").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_are_kept_and_sent_as_image_parts_with_multimodal() {
    let plot =
        "<python>\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n</python>";
    for multimodal in [false, true] {
        let server = FakeServer::start(
            FakeConfig::default(),
            Script::queue([
                FakeReply::text(plot),
                FakeReply::text("<answer>done</answer>"),
            ]),
        )
        .await
        .unwrap();
        let dir = scratch();
        let (task, prompt) = task(dir.path(), "starter/busy-days");
        let s = EpisodeSettings {
            multimodal,
            ..settings()
        };
        let out = episode_with(&client(&server), &React, &s, &task, &prompt).await;
        let obs = &out.trajectory.conversation[3];
        assert_eq!(obs.images.len(), 1, "the figure is kept");
        assert_eq!(obs.images[0].mime, "image/png");
        let sent = server.requests()[1].messages()[3].clone();
        if multimodal {
            let parts = sent["content"].as_array().expect("content parts");
            let url = parts[1]["image_url"]["url"].as_str().unwrap();
            assert!(
                url.starts_with("data:image/png;base64,iVBOR"),
                "{}",
                &url[..40]
            );
        } else {
            assert!(sent["content"].is_string(), "no image without --multimodal");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_episode_budget_ends_a_stuck_episode_and_releases_its_sandbox() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| FakeReply::text("<python>import time\ntime.sleep(60)</python>")),
    )
    .await
    .unwrap();
    let dir = scratch();
    let (task, prompt) = task(dir.path(), "starter/busy-days");
    let s = EpisodeSettings {
        cell_timeout: Duration::from_secs(50),
        episode_budget: Some(Duration::from_secs(3)),
        ..settings()
    };
    let started = Instant::now();
    let out = episode_with(&client(&server), &React, &s, &task, &prompt).await;
    assert_eq!(out.trajectory.end_reason, EndReason::EpisodeTimeout);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        out.trajectory.conversation.len(),
        3,
        "the conversation so far is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_cannot_start_ends_the_episode_with_a_sandbox_error() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| FakeReply::text("<answer>1</answer>")),
    )
    .await
    .unwrap();
    let mut cfg = dsbox_agent::sandbox::ColdConfig::from_rootfs(&crate::rootfs());
    cfg.python = "/opt/dsbox/env/bin/no-such-python".into();
    let factory = Arc::new(dsbox_agent::sandbox::ColdFactory::new(cfg));
    let dir = scratch();
    let (task, prompt) = task(dir.path(), "starter/busy-days");
    let model = client(&server);
    let s = settings();
    let ctx = EpisodeContext {
        model: &model,
        factory: factory.as_ref(),
        scaffold: &React,
        settings: &s,
        artifacts: &DiscardArtifacts,
    };
    let out = run_episode(&ctx, &task, &prompt, 0, 0).await;
    assert_eq!(out.trajectory.end_reason, EndReason::SandboxError);
    let err = out.trajectory.error.unwrap();
    assert!(
        err.contains("cannot start a sandbox for starter/busy-days#0"),
        "{err}"
    );
    assert!(factory.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_a_judge_at_temperature_zero() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| FakeReply::text("The numbers agree.\n## The final answer is: True")),
    )
    .await
    .unwrap();
    let judge = ModelJudge(client(&server));
    let reply = judge
        .judge(&JudgeRequest::user("Is 0.5 the same as 1/2?".into()))
        .await
        .unwrap();
    assert!(reply.ends_with("True"));
    let body = &server.requests()[0].body;
    assert_eq!(body["temperature"], 0.0);
    assert!(body.get("stop").is_none());
    // The OpenAI client itself is a judge too.
    let direct: &dyn Judge = &client(&server);
    assert!(
        direct
            .judge(&JudgeRequest::user("again".into()))
            .await
            .is_ok()
    );
    let _ = factory().info();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_caps_requests_in_flight() {
    let server = FakeServer::start(
        FakeConfig::default(),
        Script::handler(|_| {
            FakeReply::delayed(
                Duration::from_millis(300),
                FakeReply::text("<answer>1</answer>"),
            )
        }),
    )
    .await
    .unwrap();
    let req = ChatRequest {
        messages: vec![Message::user("hi")],
        ..ChatRequest::default()
    };
    for (limit, at_least, below) in [(1usize, 1150u64, 5000u64), (4, 250, 1100)] {
        let mut cfg = OpenAiConfig::new(server.base_url(), "fake-model");
        cfg.max_concurrent = limit;
        let model = OpenAiModel::new(cfg).unwrap();
        let started = Instant::now();
        let calls = (0..4).map(|_| model.complete(&req));
        let results = futures_join_all(calls).await;
        let took = started.elapsed().as_millis() as u64;
        assert!(results.iter().all(Result::is_ok));
        assert!(
            (at_least..below).contains(&took),
            "limit {limit}: 4 requests of 300 ms took {took} ms"
        );
    }
}

/// Await all futures concurrently (tokio has no join_all for a Vec).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
