//! Execution verification against real sandboxes: a trajectory's cells re-run in a fresh
//! sandbox of its task's data; what reproduces, and each way it can fail.

use dsbox_agent::episode::{CellRecord, EndReason, EpisodeTimings};
use dsbox_agent::model::{Message, ToolCall, Usage};
use dsbox_agent::sandbox::{ColdConfig, ColdFactory};
use dsbox_agent::synth::verify::{Failure, VerifySettings, verify};
use dsbox_agent::{Trajectory, protocol};
use dsbox_tasks::{DataRoot, SuiteRegistry, Task};

use crate::{rootfs, scratch};

/// A react trajectory running `cells` (code, the observation the episode saw, its status)
/// and answering `answer`.
fn trajectory(cells: &[(&str, &str, &str)], answer: &str) -> Trajectory {
    let mut conversation = vec![Message::system("s"), Message::user("QUESTION:\nq")];
    for (code, obs, _) in cells {
        conversation.push(Message::assistant(format!("<python>\n{code}\n</python>")));
        conversation.push(Message::user(protocol::information(obs)));
    }
    conversation.push(Message::assistant(format!("<answer>{answer}</answer>")));
    Trajectory {
        prediction: Some(answer.into()),
        ground_truth: None,
        query: "q".into(),
        turns: cells.len() as u32 + 1,
        conversation,
        extra_info: serde_json::Value::Null,
        task_id: "starter/total-revenue".into(),
        suite: "starter".into(),
        index: 0,
        trajectory: 0,
        model: "m".into(),
        scaffold: "react".into(),
        end_reason: EndReason::Answered,
        error: None,
        error_kind: None,
        tokens: Usage::default(),
        timings: EpisodeTimings::default(),
        cells: cells
            .iter()
            .map(|(_, _, status)| CellRecord {
                turn: 1,
                status: (*status).into(),
                duration_ms: 1.0,
                chars_cut: 0,
                truncation: Default::default(),
            })
            .collect(),
        images: vec![],
        submission: None,
        metrics: Default::default(),
        score: None,
    }
}

fn task(starter: &std::path::Path) -> Task {
    let mut reg = SuiteRegistry::builtin(DataRoot::at("/nonexistent")).unwrap();
    reg.set_starter_dir(starter);
    reg.load("starter")
        .unwrap()
        .task("starter/total-revenue")
        .unwrap()
        .clone()
}

const LOAD: &str = "import pandas as pd\ndf = pd.read_csv('/data/starter/sales.csv')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_execution_reproduces_or_says_why_not() {
    let dir = scratch();
    let task = task(&dir.path().join("starter"));
    let factory = ColdFactory::new(ColdConfig::from_rootfs(&rootfs()));
    let settings = VerifySettings::default();

    // Printed by the code: reproduced, and the re-run printed exactly what the episode saw.
    let t = trajectory(
        &[
            (LOAD, "", "ok"),
            ("print('ANSWER:', len(df))", "[stdout] ANSWER: 144\n", "ok"),
        ],
        "144",
    );
    let v = verify(&t, &task, &factory, &settings).await.unwrap();
    assert!(v.reproduced, "{v:?}");
    assert!(v.outputs_identical, "{v:?}");
    assert_eq!(v.statuses, ["ok", "ok"]);
    assert_eq!(v.found, ["144"]);

    // A value that depends on chance: the re-run prints another one.
    let t = trajectory(
        &[(
            "import random\nprint('ANSWER:', random.random())",
            "[stdout] ANSWER: 0.8444218515250481\n",
            "ok",
        )],
        "0.8444218515250481",
    );
    let v = verify(&t, &task, &factory, &settings).await.unwrap();
    assert!(!v.reproduced);
    assert_eq!(v.failure, Some(Failure::AnswerNotFound));
    assert!(!v.outputs_identical);
    assert!(
        v.detail.contains("is not in the re-run's outputs"),
        "{}",
        v.detail
    );

    // A cell that ran cleanly in the episode fails on re-run (here: a file the task does
    // not have — the sandbox holds only the task's own data).
    let t = trajectory(
        &[
            (LOAD, "", "ok"),
            (
                "print(open('/data/starter/visits.csv').read()[:10])",
                "[stdout] date,tempe\n",
                "ok",
            ),
            ("print('ANSWER:', len(df))", "[stdout] ANSWER: 144\n", "ok"),
        ],
        "144",
    );
    let v = verify(&t, &task, &factory, &settings).await.unwrap();
    assert_eq!(v.failure, Some(Failure::CellFailed), "{v:?}");
    assert!(
        v.detail
            .starts_with("cell 2 ran cleanly in the episode but not on re-run (FileNotFoundError"),
        "{}",
        v.detail
    );
    // The same cell failing in the episode too is an error the agent recovered from.
    let t = trajectory(
        &[
            (LOAD, "", "ok"),
            (
                "print(open('/data/starter/visits.csv').read()[:10])",
                "FileNotFoundError: ...",
                "error",
            ),
            ("print('ANSWER:', len(df))", "[stdout] ANSWER: 144\n", "ok"),
        ],
        "144",
    );
    assert!(
        verify(&t, &task, &factory, &settings)
            .await
            .unwrap()
            .reproduced
    );

    // No code at all: nothing supports the answer.
    let t = trajectory(&[], "144");
    assert_eq!(
        verify(&t, &task, &factory, &settings)
            .await
            .unwrap()
            .failure,
        Some(Failure::NoCells)
    );

    // Tool calling: the `python` calls are the cells.
    let mut t = trajectory(&[], "144");
    let mut call = Message::assistant("");
    call.tool_calls = vec![ToolCall {
        id: "c1".into(),
        name: "python".into(),
        arguments: serde_json::json!({ "code": format!("{LOAD}\nprint(len(df))") }).to_string(),
    }];
    t.conversation.insert(2, call);
    t.conversation
        .insert(3, Message::tool("c1", "[stdout] 144\n"));
    t.cells = trajectory(&[("", "", "ok")], "x").cells;
    t.scaffold = "tools".into();
    let v = verify(&t, &task, &factory, &settings).await.unwrap();
    assert!(v.reproduced, "{v:?}");
    assert!(v.outputs_identical, "{v:?}");
}
