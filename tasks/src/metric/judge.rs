//! LLM-judge metrics (llm_score, equivalence_by_llm, hms_score) behind the [`Judge`] trait.
//!
//! The crate never talks to a model itself: the agent-loop crate supplies a `Judge` that
//! calls an OpenAI-compatible server; tests use a scripted fake. Prompts are this
//! project's own words; what the reference fixes — the verdict line
//! `## The final answer is: True|False`, the 1% numeric rule, the JSON shapes of the
//! hypothesis-matching steps — is kept so judges tuned for it behave the same.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value, json};

use super::MetricError;
use crate::pyliteral::py_strip;

/// A boxed, `Send` future (the trait stays object-safe without async-trait).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One judge call: an optional system message and one user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeRequest {
    pub system: Option<String>,
    pub user: String,
    /// Ask for a JSON object reply (`response_format: json_object` where supported).
    pub json: bool,
    pub max_tokens: Option<u32>,
}

impl JudgeRequest {
    pub fn user(text: String) -> Self {
        JudgeRequest {
            system: None,
            user: text,
            json: false,
            max_tokens: None,
        }
    }
}

/// A judge call that failed (transport, HTTP status, empty reply, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JudgeError(pub String);

/// An LLM that answers grading prompts. Implementations should use temperature 0.
pub trait Judge: Send + Sync {
    fn judge<'a>(&'a self, request: &'a JudgeRequest) -> BoxFuture<'a, Result<String, JudgeError>>;
}

const VERDICT_MARKER: &str = "## The final answer is:";

/// The reference's verdict reading: the text after the first marker (up to a second one,
/// if any), trimmed; `Some(true)` only for exactly `True`, `Some(false)` for exactly
/// `False`, `None` for anything else (or no marker).
pub fn parse_verdict(reply: &str) -> Option<bool> {
    let after = reply.split(VERDICT_MARKER).nth(1)?;
    match py_strip(after) {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// The grading prompt of llm_score and equivalence_by_llm. `tolerance_percent` is the
/// relative error under which numbers count as equal.
pub fn verdict_prompt(
    query: &str,
    prediction: &str,
    truth: &str,
    tolerance_percent: f64,
) -> String {
    format!(
        "Decide whether a predicted answer to a data-analysis question is correct.\n\n\
         Question: {query}\n\n\
         Predicted answer: {prediction}\n\n\
         Reference answer: {truth}\n\n\
         How to decide:\n\
         - If the answer is a number, it is correct when its relative error against the reference value is below {tolerance_percent}%.\n\
         - Otherwise, judge it against the reference answer: same meaning, same conclusion.\n\
         - The answer must be clear and complete; a calculation without a stated result is not correct.\n\n\
         Reply in exactly this format:\n\n\
         Thoughts: <your reasoning>\n\n\
         {VERDICT_MARKER} <True or False only>\n"
    )
}

/// llm_score: 1 iff the verdict is exactly `True` (anything else, including an unreadable
/// reply, is 0, as in the reference). A failed call is an error, not a 0.
pub async fn llm_score(
    judge: &dyn Judge,
    query: &str,
    prediction: &str,
    truth: &str,
) -> Result<(f64, Map<String, Value>), MetricError> {
    let request = JudgeRequest::user(verdict_prompt(query, prediction, truth, 1.0));
    let reply = judge.judge(&request).await?;
    let verdict = parse_verdict(&reply);
    let mut details = Map::new();
    details.insert("judge_reply".into(), Value::String(reply));
    details.insert("verdict".into(), verdict.map_or(Value::Null, Value::Bool));
    Ok((if verdict == Some(true) { 1.0 } else { 0.0 }, details))
}

/// equivalence_by_llm(tolerance): like llm_score, but a reply without a clear True/False
/// verdict is an error (no score), not a 0.
pub async fn equivalence_by_llm(
    judge: &dyn Judge,
    query: &str,
    prediction: &str,
    truth: &str,
    tolerance: f64,
) -> Result<(f64, Map<String, Value>), MetricError> {
    let request = JudgeRequest::user(verdict_prompt(query, prediction, truth, tolerance * 100.0));
    let reply = judge.judge(&request).await?;
    let Some(verdict) = parse_verdict(&reply) else {
        return Err(MetricError::JudgeReply {
            metric: "equivalence_by_llm".into(),
            reason: format!("no `{VERDICT_MARKER} True|False` line in the reply"),
        });
    };
    let mut details = Map::new();
    details.insert("judge_reply".into(), Value::String(reply));
    Ok((if verdict { 1.0 } else { 0.0 }, details))
}

/// One sub-hypothesis of hms_score.
#[derive(Debug, Clone, PartialEq)]
pub struct SubHypothesis {
    pub text: String,
    pub context: String,
    pub variables: Value,
    pub relations: String,
}

/// The JSON object in a reply: a fenced ```json block, else the span from the first `{`
/// to the last `}`, else the whole reply.
pub fn extract_json(reply: &str) -> Option<Value> {
    let reply = reply.trim();
    if let Some(start) = reply.find("```json") {
        let body = &reply[start + 7..];
        let end = body.find("```").unwrap_or(body.len());
        if let Ok(v) = serde_json::from_str(body[..end].trim()) {
            return Some(v);
        }
    }
    if let Ok(v) = serde_json::from_str(reply) {
        return Some(v);
    }
    let (start, end) = (reply.find('{')?, reply.rfind('}')?);
    if start < end {
        serde_json::from_str(&reply[start..=end]).ok()
    } else {
        None
    }
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// What the hypothesis-matching prompts know about the task's data.
#[derive(Debug, Clone, Default)]
pub struct HmsContext<'a> {
    pub query: &'a str,
    pub dataset_descriptions: &'a str,
    pub columns: &'a str,
}

impl HmsContext<'_> {
    fn datasets_json(&self) -> String {
        json!([{ "dataset_description": self.dataset_descriptions, "columns": self.columns }])
            .to_string()
    }
}

async fn sub_hypotheses(
    judge: &dyn Judge,
    ctx: &HmsContext<'_>,
    hypothesis: &str,
) -> Result<Vec<SubHypothesis>, MetricError> {
    let prompt = format!(
        "Break a data-driven hypothesis into sub-hypotheses. Describe each one along three dimensions:\n\
         - context: the conditions that bound it (e.g. \"for people over 30\", \"in Asia\"); when it holds for the whole dataset, take the context from the dataset description;\n\
         - variables: the dataset columns or concepts that interact in it (or \"None\");\n\
         - relations: how those variables relate (e.g. \"positive linear\", \"inversely proportional\") (or \"None\").\n\
         Use only what the hypothesis states; add nothing.\n\n\
         Task metadata:\n```json\n{{\"datasets\": {datasets}, \"hypothesis\": {hypo}}}\n```\n\n\
         Reply with a JSON object of this form:\n```json\n\
         {{\"sub_hypo\": [{{\"text\": \"...\", \"context\": \"...\", \"variables\": [\"...\"], \"relations\": \"...\"}}]}}\n```\n",
        datasets = ctx.datasets_json(),
        hypo = Value::String(hypothesis.to_owned()),
    );
    let request = JudgeRequest {
        system: None,
        user: prompt,
        json: true,
        max_tokens: None,
    };
    let reply = judge.judge(&request).await?;
    let parsed: Vec<SubHypothesis> = extract_json(&reply)
        .and_then(|v| v.get("sub_hypo").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter(|h| h.is_object())
        .map(|h| SubHypothesis {
            text: text_of(h.get("text")),
            context: text_of(h.get("context")),
            variables: h
                .get("variables")
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
            relations: text_of(h.get("relations")),
        })
        .collect();
    // As the reference: a hypothesis that cannot be split is one sub-hypothesis whose
    // context is "None" (which then matches nothing).
    if parsed.is_empty() {
        return Ok(vec![SubHypothesis {
            text: hypothesis.to_owned(),
            context: "None".into(),
            variables: Value::Array(Vec::new()),
            relations: String::new(),
        }]);
    }
    Ok(parsed)
}

async fn contexts_match(
    judge: &dyn Judge,
    gold: &SubHypothesis,
    pred: &SubHypothesis,
) -> Result<bool, MetricError> {
    if gold.context == pred.context {
        return Ok(true);
    }
    if gold.context == "None" || pred.context == "None" {
        return Ok(false);
    }
    let prompt = format!(
        "Does the predicted context mean the same as the gold context? A context is the set of \
         conditions that bounds a hypothesis (e.g. \"for men over 30\"). If both hypotheses hold \
         for the whole dataset, their contexts match.\n\n\
         ```json\n{}\n```\n\nReply with a JSON object: {{\"match\": true}} or {{\"match\": false}}.",
        json!({
            "gold_hypothesis": gold.text, "gold_context": gold.context,
            "predicted_hypothesis": pred.text, "predicted_context": pred.context,
        })
    );
    let request = JudgeRequest {
        system: None,
        user: prompt,
        json: true,
        max_tokens: None,
    };
    let reply = judge.judge(&request).await?;
    // As the reference: an unreadable reply means "no match".
    Ok(extract_json(&reply)
        .and_then(|v| v.get("match").and_then(Value::as_bool))
        .unwrap_or(false))
}

const COMPARE_SYSTEM: &str = "You compare two data-driven hypotheses. Answer with exactly what is asked, without conversation.";

fn compare_prompt(
    ctx: &HmsContext<'_>,
    gold: &SubHypothesis,
    pred: &SubHypothesis,
    question: &str,
) -> String {
    format!(
        "Compare two hypotheses, HypoA (gold) and HypoB (predicted), that answer the query below over the \
         described dataset(s). Contexts are the conditions under which a hypothesis holds; variables are \
         the quantities it mentions; relations are how those variables relate.\n\n\
         ```json\n{}\n```\n\n{question}",
        json!({
            "datasets": ctx.datasets_json(), "query": ctx.query,
            "HypoA": gold.text, "HypoB": pred.text,
        })
    )
}

/// Variable F1 from the judge's set sizes: p = |A∩B|/|B|, r = |A∩B|/|A|.
fn variable_f1(reply: &str) -> Result<f64, MetricError> {
    let bad = |reason: &str| MetricError::JudgeReply {
        metric: "hms_score".into(),
        reason: reason.into(),
    };
    let v = extract_json(reply).ok_or_else(|| bad("variables reply is not JSON"))?;
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let inter = num("intersection").ok_or_else(|| bad("variables reply lacks `intersection`"))?;
    let p = match num("sizeB") {
        Some(b) if b > 0.0 => inter / b,
        _ => 0.0,
    };
    let r = match num("sizeA") {
        Some(a) if a > 0.0 => inter / a,
        _ => 0.0,
    };
    Ok(if p > 0.0 && r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    })
}

/// Relation score: A (very similar) 1, B (similar but more general) 0.5, C (different) 0.
fn relation_score(reply: &str) -> Result<f64, MetricError> {
    let bad = |reason: &str| MetricError::JudgeReply {
        metric: "hms_score".into(),
        reason: reason.into(),
    };
    let v = extract_json(reply).ok_or_else(|| bad("relations reply is not JSON"))?;
    let answer = v
        .get("answer")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned();
    if answer.starts_with('A') || answer.contains("very similar") {
        Ok(1.0)
    } else if answer.starts_with('B') || answer.contains("similar but general than HypoA") {
        Ok(0.5)
    } else if answer.starts_with('C') || answer.contains("different") {
        Ok(0.0)
    } else {
        Err(bad("relations reply has no A/B/C answer"))
    }
}

/// hms_score: split gold and predicted hypotheses into sub-hypotheses; greedily match each
/// predicted one to the first unmatched gold one with the same context; for each matched
/// pair, score = variable F1 × relation score; final = (matched gold / gold count) ×
/// (sum of pair scores / predicted count).
///
/// The reference re-judges the *full* hypotheses for every matched pair; this compares the
/// matched pair itself, which is what "per matched pair" means.
pub async fn hms_score(
    judge: &dyn Judge,
    ctx: &HmsContext<'_>,
    prediction: &str,
    truth: &str,
) -> Result<(f64, Map<String, Value>), MetricError> {
    let gold = sub_hypotheses(judge, ctx, truth).await?;
    let pred = sub_hypotheses(judge, ctx, prediction).await?;
    let mut covered = vec![false; gold.len()];
    let mut pairs = Vec::new();
    for (p_id, p) in pred.iter().enumerate() {
        for (g_id, g) in gold.iter().enumerate() {
            if covered[g_id] {
                continue;
            }
            if contexts_match(judge, g, p).await? {
                covered[g_id] = true;
                pairs.push((p_id, g_id));
                break;
            }
        }
    }
    let mut sum = 0.0;
    let mut pair_details = Vec::new();
    for &(p_id, g_id) in &pairs {
        let (g, p) = (&gold[g_id], &pred[p_id]);
        let var_q = "Question: which variables appear in HypoA and in HypoB? Match them fuzzily (paraphrases count). \
                     Reply with a JSON object: {\"sizeA\": <number of variables in HypoA>, \"sizeB\": <number in HypoB>, \
                     \"intersection\": <number common to both>, \"explanation\": \"...\"}";
        let rel_q = "Question: does HypoB state the same relation as HypoA? Order of specificity: \"there is a relationship\" > \
                     \"positive relationship\" > \"positive AND (linear OR quadratic)\" > \"positive AND linear\". \
                     Options: A) very similar  B) similar but general than HypoA  C) different. \
                     Reply with a JSON object: {\"answer\": \"A) very similar\" | \"B) similar but general than HypoA\" | \"C) different\", \"explanation\": \"...\"}";
        let ask = |q: &str| JudgeRequest {
            system: Some(COMPARE_SYSTEM.into()),
            user: compare_prompt(ctx, g, p, q),
            json: true,
            max_tokens: Some(512),
        };
        let f1 = variable_f1(&judge.judge(&ask(var_q)).await?)?;
        let rel = relation_score(&judge.judge(&ask(rel_q)).await?)?;
        let score = f1 * rel;
        sum += score;
        pair_details.push(json!({"predicted": p_id, "gold": g_id, "variable_f1": f1, "relation": rel, "score": score}));
    }
    let matched = covered.iter().filter(|c| **c).count();
    let recall = matched as f64 / gold.len() as f64;
    let mean_accuracy = sum / pred.len() as f64;
    let mut details = Map::new();
    details.insert("gold_sub_hypotheses".into(), json!(gold.len()));
    details.insert("predicted_sub_hypotheses".into(), json!(pred.len()));
    details.insert("recall_context".into(), json!(recall));
    details.insert("mean_accuracy".into(), json!(mean_accuracy));
    details.insert("pairs".into(), Value::Array(pair_details));
    Ok((recall * mean_accuracy, details))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_reference() {
        assert_eq!(
            parse_verdict("Thoughts: ok\n\n## The final answer is: True"),
            Some(true)
        );
        assert_eq!(
            parse_verdict("## The final answer is:  False \n"),
            Some(false)
        );
        assert_eq!(parse_verdict("## The final answer is: true"), None);
        assert_eq!(parse_verdict("## The final answer is: True."), None);
        assert_eq!(parse_verdict("The final answer is: True"), None);
        // Text after the first marker up to a second marker.
        assert_eq!(
            parse_verdict("## The final answer is: True ## The final answer is: False"),
            Some(true)
        );
    }

    #[test]
    fn json_extraction() {
        assert_eq!(extract_json("```json\n{\"a\": 1}\n```").unwrap()["a"], 1);
        assert_eq!(
            extract_json("Sure! {\"a\": 2} hope it helps").unwrap()["a"],
            2
        );
        assert!(extract_json("no json").is_none());
    }

    #[test]
    fn variable_and_relation_scores() {
        assert_eq!(
            variable_f1(r#"{"sizeA": 2, "sizeB": 2, "intersection": 1}"#).unwrap(),
            0.5
        );
        assert_eq!(
            variable_f1(r#"{"sizeA": 0, "sizeB": 2, "intersection": 0}"#).unwrap(),
            0.0
        );
        assert!(variable_f1("nope").is_err());
        assert_eq!(
            relation_score(r#"{"answer": "B) similar but general than HypoA"}"#).unwrap(),
            0.5
        );
        assert_eq!(
            relation_score(r#"{"answer": "C) different"}"#).unwrap(),
            0.0
        );
        assert!(relation_score(r#"{"answer": "maybe"}"#).is_err());
    }
}
