//! The JSON Schema in `tasks/schema/task.schema.json` describes the serde record.

mod common;

use std::collections::BTreeSet;

use dsbox_tasks::Task;
use serde_json::{Value, json};

fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/task.schema.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn schema_properties_are_the_record_fields() {
    let full: Task = serde_json::from_value(json!({
        "id": "s/1", "suite": "s", "track": "prediction", "question": "q", "context": "c",
        "data": [{"path": "/data/a", "host": "/h/a", "kind": "dir"}], "submission": "/submission/x.csv",
        "answer": [1, "a"], "answer_guideline": "g", "metric": {"name": "exact_match", "params": {"tolerance": 0.1}},
        "metadata": {"k": 1}
    }))
    .unwrap();
    let record = serde_json::to_value(&full).unwrap();
    let s = schema();
    assert_eq!(keys(&record), keys(&s["properties"]));
    assert_eq!(s["required"], json!(["question"]));
    assert_eq!(
        s["properties"]["track"]["enum"],
        json!(["analysis", "prediction"])
    );
    let data_item = &s["properties"]["data"]["items"]["oneOf"][1];
    assert_eq!(keys(&record["data"][0]), keys(&data_item["properties"]));
    assert_eq!(
        keys(&record["metric"]),
        keys(&s["properties"]["metric"]["properties"])
    );
    let names: Vec<&str> = s["properties"]["metric"]["properties"]["name"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, dsbox_tasks::metric::METRIC_NAMES);
    // The record round-trips.
    assert_eq!(serde_json::from_value::<Task>(record).unwrap(), full);
}

#[test]
fn minimal_records_load_and_typos_are_rejected() {
    let t: Task = serde_json::from_value(json!({"question": "q"})).unwrap();
    assert_eq!(t.metric.name, "exact_match");
    let err = serde_json::from_value::<Task>(json!({"question": "q", "anwser": "1"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("anwser"), "{err}");
    assert!(
        serde_json::from_value::<Task>(
            json!({"question": "q", "metric": {"name": "x", "param": {}}})
        )
        .is_err()
    );
}

#[test]
fn starter_records_fit_the_schema_shape() {
    let (reg, _tmp) = common::registry_without_data();
    let s = schema();
    let allowed = keys(&s["properties"]);
    for t in reg.load("starter").unwrap().tasks {
        let v = serde_json::to_value(&t).unwrap();
        assert!(keys(&v).is_subset(&allowed));
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["path"].as_str().unwrap().starts_with("/data/"))
        );
    }
}
