//! The env API: full episodes on the starter suite (no ../shared needed), the scaffold's
//! rules, the task metric's reward, only the task's data, batches, posted records, and
//! LLM-judge metrics without a judge.

use serde_json::{Value, json};

use crate::{Server, block_on, require_root};

const TOP_REGION: &str = "<python>import pandas as pd\ndf = pd.read_csv('/data/starter/sales.csv')\nprint(df.groupby('region')['revenue'].sum().idxmax())</python>";

async fn create(s: &Server, body: Value) -> Value {
    let (status, v) = s.post("/v1/envs", body).await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn step(s: &Server, env: &str, action: Value) -> Value {
    let (status, v) = s
        .post(&format!("/v1/envs/{env}/step"), json!({"action": action}))
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The printed value inside an observation `<information>[stdout] X\n</information>`.
fn printed(obs: &Value) -> String {
    let content = obs["observations"][0]["content"].as_str().unwrap();
    content
        .split("[stdout] ")
        .nth(1)
        .and_then(|r| r.split('\n').next())
        .unwrap_or_else(|| panic!("no stdout in {content:?}"))
        .trim()
        .to_owned()
}

#[test]
fn a_starter_episode_earns_1_for_the_right_answer_and_0_for_a_wrong_one() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let env = create(s, json!({"task_id": "starter/top-region"})).await;
        let id = env["env_id"].as_str().unwrap().to_owned();
        let msgs = env["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["role"], "system");
        assert_eq!(msgs[1]["role"], "user");
        assert!(
            msgs[1]["content"].as_str().unwrap().contains("QUESTION"),
            "{env}"
        );
        assert_eq!(env["metric"], "exact_match");
        assert_eq!(env["max_turns"], 15);

        // Code runs; its cleaned output comes back as a user message.
        let r = step(
            s,
            &id,
            json!(format!("{TOP_REGION}\nNow I wait for the output.")),
        )
        .await;
        assert_eq!(r["done"], false);
        assert_eq!(
            r["info"]["assistant"],
            json!({"role": "assistant", "content": TOP_REGION}),
            "the reply is cut after its first action"
        );
        assert_eq!(r["reward"], 0.0);
        assert_eq!(r["observations"][0]["role"], "user");
        assert!(
            r["observations"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("\n<information>")
        );
        assert_eq!(r["info"]["cells"][0]["status"], "ok");
        let region = printed(&r);
        // Neither code nor answer: the scaffold's fixed message, nothing runs.
        let r = step(s, &id, json!("I think I know.")).await;
        assert_eq!(r["done"], false);
        assert!(
            r["observations"][0]["content"]
                .as_str()
                .unwrap()
                .contains("<answer>"),
            "{r}"
        );
        assert!(r["info"].get("cells").is_none());
        // The answer ends the episode with the metric's reward.
        let r = step(s, &id, json!(format!("<answer>{region}</answer>"))).await;
        assert_eq!(r["done"], true);
        assert_eq!(r["reward"], 1.0, "{r}");
        assert_eq!(r["info"]["end_reason"], "answered");
        assert_eq!(r["info"]["answer"], region.as_str());
        assert_eq!(r["observations"], json!([]));
        // Done: no more steps; the conversation is kept until DELETE.
        let (status, v) = s
            .post(
                &format!("/v1/envs/{id}/step"),
                json!({"action": "<answer>x</answer>"}),
            )
            .await;
        assert_eq!(status, 409, "{v}");
        let (_, info) = s.get(&format!("/v1/envs/{id}")).await;
        assert_eq!(info["turns"], 3);
        assert_eq!(info["reward"], 1.0);
        assert_eq!(info["messages"].as_array().unwrap().len(), 2 + 3 + 2);
        assert_eq!(s.delete(&format!("/v1/envs/{id}")).await.0, 200);
        assert_eq!(s.get(&format!("/v1/envs/{id}")).await.0, 404);

        // A wrong answer scores 0.
        let env = create(s, json!({"task_id": "starter/top-region"})).await;
        let id = env["env_id"].as_str().unwrap();
        let r = step(s, id, json!("<answer>Atlantis</answer>")).await;
        assert_eq!(
            (r["done"].clone(), r["reward"].clone()),
            (json!(true), json!(0.0)),
            "{r}"
        );
        s.delete(&format!("/v1/envs/{id}")).await;
    });
}

#[test]
fn an_env_sees_only_its_tasks_files_and_ends_at_the_turn_limit() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let env = create(s, json!({"task_id": "starter/top-region", "max_turns": 2})).await;
        let id = env["env_id"].as_str().unwrap();
        let r = step(
            s,
            id,
            json!("<python>import os\nprint(sorted(os.listdir('/data/starter')))</python>"),
        )
        .await;
        assert_eq!(printed(&r), "['sales.csv']", "only the task's own file");
        let r = step(s, id, json!("<python>print('never runs')</python>")).await;
        assert_eq!(r["done"], true);
        assert_eq!(r["reward"], 0.0);
        assert_eq!(r["info"]["end_reason"], "max_turns");
        assert_eq!(r["observations"], json!([]), "nothing runs at the limit");
        s.delete(&format!("/v1/envs/{id}")).await;
    });
}

#[test]
fn batches_create_and_step_many_envs() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let (status, v) = s
            .post(
                "/v1/envs/batch",
                json!({"envs": [
                    {"task_id": "starter/top-region"},
                    {"task_id": "starter/top-region"},
                    {"task_id": "starter/nope"},
                ]}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[2]["status"], 404);
        assert_eq!(results[2]["kind"], "not_found");
        let ids: Vec<String> = results[..2]
            .iter()
            .map(|r| r["env_id"].as_str().unwrap().to_owned())
            .collect();
        let (status, v) = s
            .post(
                "/v1/envs/step",
                json!({"steps": [
                    {"env_id": ids[0], "action": TOP_REGION},
                    {"env_id": ids[1], "action": "<answer>nowhere</answer>"},
                    {"env_id": "env-does-not-exist", "action": "x"},
                ]}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let r = v["results"].as_array().unwrap();
        assert_eq!(r[0]["done"], false);
        assert_eq!(r[1]["done"], true);
        assert_eq!(r[1]["reward"], 0.0);
        assert_eq!(r[2]["status"], 404);
        let region = printed(&r[0]);
        let (_, v) = s
            .post(
                "/v1/envs/step",
                json!({"steps": [{"env_id": ids[0], "action": format!("<answer>{region}</answer>")}]}),
            )
            .await;
        assert_eq!(v["results"][0]["reward"], 1.0, "{v}");
        for id in ids {
            s.delete(&format!("/v1/envs/{id}")).await;
        }
    });
}

#[test]
fn a_posted_record_uses_the_servers_data_and_the_tools_scaffold_works() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let task = json!({
            "question": "What is the sum of y?",
            "data": ["/data/fixture/numbers.csv", "/data/fixture/missing.csv"],
            "answer": "12",
            "metric": {"name": "exact_match", "params": {"tolerance": 0.01}},
        });
        let env = create(s, json!({"task": task, "scaffold": "tools"})).await;
        let id = env["env_id"].as_str().unwrap();
        assert_eq!(env["scaffold"], "tools");
        assert_eq!(env["missing_data"], json!(["/data/fixture/missing.csv"]));
        assert!(
            env["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("function calling")
        );
        let r = step(
            s,
            id,
            json!({"content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"import os, pandas as pd\\nprint(int(pd.read_csv('/data/fixture/numbers.csv').y.sum()), os.path.exists('/data/other'))\"}"}}]}),
        )
        .await;
        let obs = &r["observations"][0];
        assert_eq!(obs["role"], "tool");
        assert_eq!(obs["tool_call_id"], "c1");
        assert!(obs["content"].as_str().unwrap().contains("12 False"), "{r}");
        let r = step(
            s,
            id,
            json!({"tool_calls": [{"id": "c2", "function": {"name": "answer", "arguments": "{\"answer\": \"12\"}"}}]}),
        )
        .await;
        assert_eq!(r["done"], true);
        assert_eq!(r["reward"], 1.0, "{r}");
        s.delete(&format!("/v1/envs/{id}")).await;
    });
}

#[test]
fn llm_judge_metrics_give_a_null_reward_and_say_why_without_a_judge() {
    require_root!();
    let s = Server::shared();
    block_on(async {
        let task = json!({"question": "Which hypothesis holds?", "answer": "x rises with y", "metric": {"name": "llm_score"}});
        let env = create(s, json!({"task": task})).await;
        let id = env["env_id"].as_str().unwrap();
        let r = step(s, id, json!("<answer>x rises with y</answer>")).await;
        assert_eq!(r["done"], true);
        assert_eq!(r["reward"], Value::Null, "{r}");
        let note = r["info"]["note"].as_str().unwrap();
        assert!(note.contains("--judge-base-url"), "{note}");
        s.delete(&format!("/v1/envs/{id}")).await;
    });
}

#[test]
fn with_a_judge_llm_judge_metrics_give_the_judges_verdict() {
    require_root!();
    use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
    use dsbox_agent::model::{OpenAiConfig, OpenAiModel};
    // The judge (a fake OpenAI-compatible server) says True only for the hypothesis
    // that names the right direction.
    let judge = block_on(FakeServer::start(
        FakeConfig::default(),
        Script::handler(|r| {
            // (The prompt holds the gold hypothesis too.)
            let verdict = !r.last_content().contains("falls");
            FakeReply::text(format!(
                "Compared the hypotheses.\n## The final answer is: {}",
                if verdict { "True" } else { "False" }
            ))
        }),
    ))
    .unwrap();
    let url = judge.base_url();
    let s = Server::start(move |c| {
        c.templates[0].1.pool_size = 0;
        let model = OpenAiModel::new(OpenAiConfig::new(&url, "fake-model")).unwrap();
        c.judge = Some(std::sync::Arc::new(model));
        c.judge_name = Some("fake-model".into());
    });
    block_on(async {
        let task = json!({"question": "How do x and y relate?", "answer": "x rises with y", "metric": {"name": "llm_score"}});
        for (answer, reward) in [("x rises with y", 1.0), ("x falls as y rises", 0.0)] {
            let env = create(&s, json!({"task": task})).await;
            let id = env["env_id"].as_str().unwrap();
            let r = step(&s, id, json!(format!("<answer>{answer}</answer>"))).await;
            assert_eq!(r["reward"], reward, "{answer}: {r}");
            assert!(r["info"].get("note").is_none(), "{r}");
            s.delete(&format!("/v1/envs/{id}")).await;
        }
    });
    assert!(judge.request_count() >= 2);
    s.stop();
}
