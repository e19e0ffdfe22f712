//! LLM-judge metrics against a scripted fake judge: verdict parsing, failures as "not
//! evaluable" (not 0), and the hypothesis-matching score computed from judged parts.

use std::sync::Mutex;

use dsbox_tasks::metric::judge::BoxFuture;
use dsbox_tasks::{Judge, JudgeError, JudgeRequest, Metric, MetricSpec, Predictions, Scope, Task};
use serde_json::json;

/// A judge that answers with a function of the request and records what it was asked.
struct FakeJudge<F: Fn(&JudgeRequest) -> Result<String, JudgeError> + Send + Sync> {
    reply: F,
    asked: Mutex<Vec<JudgeRequest>>,
}

impl<F: Fn(&JudgeRequest) -> Result<String, JudgeError> + Send + Sync> FakeJudge<F> {
    fn new(reply: F) -> Self {
        FakeJudge {
            reply,
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl<F: Fn(&JudgeRequest) -> Result<String, JudgeError> + Send + Sync> Judge for FakeJudge<F> {
    fn judge<'a>(&'a self, request: &'a JudgeRequest) -> BoxFuture<'a, Result<String, JudgeError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(request.clone());
            // Yield once so the fake behaves like a real asynchronous call.
            tokio::task::yield_now().await;
            (self.reply)(request)
        })
    }
}

fn task(metric: &str, answer: &str) -> Task {
    serde_json::from_value(json!({
        "id": "t/1", "question": "Is spend higher in the treatment group?",
        "answer": answer, "metric": {"name": metric},
        "metadata": {"dataset_descriptions": "an A/B test", "columns_info": "group, spend"}
    }))
    .unwrap()
}

#[tokio::test]
async fn llm_score_reads_the_verdict_line() {
    let t = task("llm_score", "Yes, by 10%.");
    let m = Metric::for_task(&t).unwrap();
    for (reply, want) in [
        ("Thoughts: same.\n\n## The final answer is: True", 1.0),
        ("Thoughts: no.\n\n## The final answer is: False", 0.0),
        ("I think it is right", 0.0),
        ("## The final answer is: true", 0.0),
    ] {
        let judge = FakeJudge::new(move |_| Ok(reply.to_owned()));
        let s = m
            .score_with_judge("Treatment spends 10% more.", &t, &judge)
            .await
            .unwrap();
        assert_eq!(s.value, want, "{reply:?}");
        let asked = judge.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        let prompt = &asked[0].user;
        assert!(prompt.contains("Is spend higher in the treatment group?"));
        assert!(prompt.contains("Treatment spends 10% more."));
        assert!(prompt.contains("Yes, by 10%."));
        assert!(prompt.contains("below 1%") && prompt.contains("## The final answer is:"));
    }
    // Without a judge: not evaluable, with the reason.
    assert_eq!(m.score("x", &t).unwrap_err().kind(), "needs-judge");
    // A failed call is an error (not evaluable), not a 0.
    let down = FakeJudge::new(|_| Err(JudgeError("connection refused".into())));
    let err = m.score_with_judge("x", &t, &down).await.unwrap_err();
    assert_eq!(err.kind(), "judge-error");
    assert!(err.to_string().contains("connection refused"));
}

#[tokio::test]
async fn equivalence_without_a_verdict_is_an_error() {
    let mut t = task("equivalence_by_llm", "42");
    t.metric = MetricSpec::new("equivalence_by_llm").with("tolerance", 0.05);
    let m = Metric::for_task(&t).unwrap();
    let yes = FakeJudge::new(|_| Ok("## The final answer is: True".into()));
    assert_eq!(m.score_with_judge("41", &t, &yes).await.unwrap().value, 1.0);
    assert!(yes.asked.lock().unwrap()[0].user.contains("below 5%"));
    let vague = FakeJudge::new(|_| Ok("Probably equivalent.".into()));
    assert_eq!(
        m.score_with_judge("41", &t, &vague)
            .await
            .unwrap_err()
            .kind(),
        "judge-reply"
    );
}

#[tokio::test]
async fn sync_metrics_do_not_call_the_judge() {
    let t = task("exact_match", "42");
    let judge = FakeJudge::new(|_| panic!("must not be called"));
    let s = Metric::for_task(&t)
        .unwrap()
        .score_with_judge("42.0", &t, &judge)
        .await
        .unwrap();
    assert_eq!(s.value, 1.0);
}

/// A scripted hypothesis judge: the gold hypothesis splits into contexts c1 and c2, the
/// prediction into c1 (identical text, no judge needed) and "elsewhere" (judged not to
/// match c2); the one matched pair shares 1 of 2 variables and a more general relation.
fn hms_reply(req: &JudgeRequest) -> Result<String, JudgeError> {
    let u = &req.user;
    if u.contains("\"sub_hypo\"") {
        let body = if u.contains("GOLD HYPOTHESIS") {
            json!({"sub_hypo": [
                {"text": "g1", "context": "c1", "variables": ["spend", "group"], "relations": "higher"},
                {"text": "g2", "context": "c2", "variables": ["age"], "relations": "none"}]})
        } else {
            json!({"sub_hypo": [
                {"text": "p1", "context": "c1", "variables": ["spend"], "relations": "higher"},
                {"text": "p2", "context": "elsewhere", "variables": [], "relations": "none"}]})
        };
        return Ok(format!("```json\n{body}\n```"));
    }
    if u.contains("\"match\"") {
        return Ok("{\"match\": false}".into());
    }
    if u.contains("sizeA") {
        return Ok(
            "{\"sizeA\": 2, \"sizeB\": 2, \"intersection\": 1, \"explanation\": \"spend\"}".into(),
        );
    }
    if u.contains("very similar") {
        return Ok("Sure: {\"answer\": \"B) similar but general than HypoA\"}".into());
    }
    Err(JudgeError(format!("unexpected request: {u}")))
}

#[tokio::test]
async fn hms_score_from_judged_parts() {
    let t = task("hms_score", "GOLD HYPOTHESIS: treatment spends more");
    let m = Metric::for_task(&t).unwrap();
    let judge = FakeJudge::new(hms_reply);
    let s = m
        .score_with_judge("treatment spends more, elsewhere nothing", &t, &judge)
        .await
        .unwrap();
    // recall 1/2 × (pair score 0.5 F1 × 0.5 relation) / 2 predicted = 0.0625
    assert_eq!(s.value, 0.0625);
    assert_eq!(s.details["recall_context"], 0.5);
    assert_eq!(s.details["pairs"][0]["variable_f1"], 0.5);
    let asked = judge.asked.lock().unwrap();
    // 2 splits + 1 judged context (p2 vs g2; p1/g1 match textually, p2 vs g1 is covered)
    // + var + rel for the one pair.
    assert_eq!(
        asked.len(),
        5,
        "{:#?}",
        asked.iter().map(|r| &r.user[..60]).collect::<Vec<_>>()
    );
    assert!(asked.iter().all(|r| r.json));
    assert!(asked[0].user.contains("an A/B test"));
}

#[tokio::test]
async fn hms_unsplittable_hypotheses_are_compared_whole() {
    let t = task("hms_score", "gold");
    let m = Metric::for_task(&t).unwrap();
    // Neither hypothesis can be split: each becomes one sub-hypothesis with context "None",
    // and identical contexts match (the reference checks equality first), so the whole
    // hypotheses are compared.
    let judge = FakeJudge::new(|r: &JudgeRequest| {
        Ok(if r.user.contains("sizeA") {
            "{\"sizeA\": 1, \"sizeB\": 1, \"intersection\": 1}".into()
        } else if r.user.contains("very similar") {
            "{\"answer\": \"A) very similar\"}".into()
        } else {
            "I cannot do that.".into()
        })
    });
    assert_eq!(
        m.score_with_judge("pred", &t, &judge).await.unwrap().value,
        1.0
    );
    // A judge that answers nothing usable is an error, not a made-up score.
    let useless = FakeJudge::new(|_| Ok("I cannot do that.".into()));
    assert_eq!(
        m.score_with_judge("pred", &t, &useless)
            .await
            .unwrap_err()
            .kind(),
        "judge-reply"
    );
    // A broken relation reply on a matched pair is an error, not a made-up score.
    let judge = FakeJudge::new(|r: &JudgeRequest| {
        if r.user.contains("\"sub_hypo\"") {
            Ok("{\"sub_hypo\": [{\"text\": \"x\", \"context\": \"all data\", \"variables\": [], \"relations\": \"\"}]}".into())
        } else if r.user.contains("sizeA") {
            Ok("{\"sizeA\": 1, \"sizeB\": 1, \"intersection\": 1}".into())
        } else {
            Ok("no idea".into())
        }
    });
    assert_eq!(
        m.score_with_judge("pred", &t, &judge)
            .await
            .unwrap_err()
            .kind(),
        "judge-reply"
    );
}

#[tokio::test]
async fn a_suite_scored_with_a_judge() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.jsonl"),
        "{\"id\": \"a\", \"question\": \"q1\", \"answer\": \"yes\"}\n{\"id\": \"b\", \"question\": \"q2\", \"answer\": \"no\"}\n{\"id\": \"c\", \"question\": \"q3\", \"answer\": \"x\", \"metric\": {\"name\": \"dabstep\"}}\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("j.toml"), "name = \"judged\"\nformat = \"dsbox\"\nfiles = [\"t.jsonl\"]\nmetric = { name = \"llm_score\" }\n").unwrap();
    let mut reg =
        dsbox_tasks::SuiteRegistry::builtin(dsbox_tasks::DataRoot::at(tmp.path().join("none")))
            .unwrap();
    reg.add_user_dir(tmp.path()).unwrap();
    let suite = reg.load("judged").unwrap();
    let preds_path = tmp.path().join("p.jsonl");
    std::fs::write(&preds_path, "{\"id\": \"judged/a\", \"prediction\": \"yes\"}\n{\"id\": \"judged/c\", \"prediction\": \"X\"}\n").unwrap();
    let preds = Predictions::read(&preds_path).unwrap();
    let judge = FakeJudge::new(|r: &JudgeRequest| {
        Ok(format!(
            "## The final answer is: {}",
            if r.user.contains("q1") {
                "True"
            } else {
                "False"
            }
        ))
    });
    let scored = dsbox_tasks::score_suite_with_judge(&suite, &preds, Scope::AllTasks, &judge).await;
    let scores: Vec<Option<f64>> = scored.rows.iter().map(|r| r.score).collect();
    assert_eq!(scores, [Some(1.0), Some(0.0), Some(1.0)]);
    assert!(scored.rows[1].missing);
    // The missing prediction is not sent to the judge.
    assert_eq!(judge.asked.lock().unwrap().len(), 1);
    assert_eq!(scored.aggregate.mean, 2.0 / 3.0);
    // Without a judge, the judged tasks are not evaluable.
    let plain = dsbox_tasks::score_suite(&suite, &preds, Scope::AllTasks);
    assert_eq!(plain.aggregate.errors.get("needs-judge"), Some(&1));
}
