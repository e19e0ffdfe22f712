//! The LLM-judge rubric (the reference's weights): executability 0.4, answer quality 0.3,
//! alignment with the query 0.2, technical soundness 0.1. The judge scores each criterion
//! from 0 to 10 in a JSON object; the total is the weighted mean scaled to 0..1, and a
//! trajectory is kept when it reaches the threshold (0.6 by default). A reply that is not
//! such an object is an error (retried on the next `dsbox synth filter`), never a score.

use std::sync::OnceLock;

use dsbox_tasks::Task;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::episode::Trajectory;
use crate::model::{ChatRequest, Message, Model, Role};
use crate::protocol::cap_text;

/// Names the rubric prompt; cached judgements of another version are not reused.
pub const RUBRIC_VERSION: &str = "synth-judge/v1";
/// The default threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.6;
/// (criterion, weight), in the order of the rubric.
pub const WEIGHTS: [(&str, f64); 4] = [
    ("executability", 0.4),
    ("answer_quality", 0.3),
    ("alignment", 0.2),
    ("technical", 0.1),
];
/// Characters of the transcript shown to the judge (head and tail are kept).
const TRANSCRIPT_CAP: usize = 24_000;

/// The judge's system prompt. Its first sentence identifies the role (the scripted
/// analyst keys on it).
pub const JUDGE_SYSTEM: &str = "You grade a data-analysis agent's trajectory for use as training data. You are strict and fair, and you reply with a JSON object only.";

/// A judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeScores {
    /// Each criterion, 0 to 10.
    pub executability: f64,
    pub answer_quality: f64,
    pub alignment: f64,
    pub technical: f64,
    /// The weighted total, 0 to 1.
    pub total: f64,
    #[serde(default)]
    pub rationale: String,
}

/// The transcript as the judge reads it: every turn after the system prompt, labelled.
fn transcript(t: &Trajectory) -> String {
    let mut out = String::new();
    for m in t
        .conversation
        .iter()
        .skip_while(|m| m.role == Role::System)
        .skip(1)
    {
        let who = match m.role {
            Role::Assistant => "AGENT",
            Role::User => "ENVIRONMENT",
            Role::Tool => "TOOL RESULT",
            Role::System => "SYSTEM",
        };
        out.push_str(&format!("[{who}]\n{}\n", m.content.trim()));
        for c in &m.tool_calls {
            out.push_str(&format!("(calls {} with {})\n", c.name, c.arguments));
        }
        out.push('\n');
    }
    cap_text(&out, TRANSCRIPT_CAP).0
}

/// The judge request for one trajectory.
pub fn request(task: &Task, t: &Trajectory) -> ChatRequest {
    let reference = task.answer_text().unwrap_or_else(|| "(none given)".into());
    let user = format!(
        "QUERY:\n{}\n\nREFERENCE ANSWER (computed when the query was written; it may be wrong):\n{reference}\n\nTRAJECTORY:\n{}\nFINAL ANSWER:\n{}\n\nRUBRIC (score each criterion from 0 to 10):\n- executability (weight 0.4): the code runs without errors, each step builds on the previous ones, and the outputs support the final answer.\n- answer_quality (weight 0.3): the final answer is correct (compare with the outputs and the reference answer), precise, and in the format the query asks for.\n- alignment (weight 0.2): the work answers exactly what the query asks, nothing else.\n- technical (weight 0.1): the methods are appropriate and statistically sound.\n\nReply with only this JSON object:\n{{\"executability\": <0-10>, \"answer_quality\": <0-10>, \"alignment\": <0-10>, \"technical\": <0-10>, \"rationale\": \"<one sentence>\"}}",
        task.question.trim(),
        transcript(t),
        t.prediction.as_deref().unwrap_or("(no answer)"),
    );
    ChatRequest {
        messages: vec![Message::system(JUDGE_SYSTEM), Message::user(user)],
        temperature: Some(0.0),
        max_tokens: Some(512),
        json: true,
        ..ChatRequest::default()
    }
}

/// Read the judge's reply: the first JSON object in it, each criterion a number 0..=10.
pub fn parse_reply(text: &str) -> Result<JudgeScores, String> {
    static OBJECT: OnceLock<Regex> = OnceLock::new();
    let re = OBJECT.get_or_init(|| Regex::new(r"(?s)\{.*\}").expect("valid regex"));
    let excerpt = || text.chars().take(200).collect::<String>();
    let candidate = re
        .find(text)
        .map(|m| m.as_str())
        .ok_or_else(|| format!("the judge's reply holds no JSON object: {:?}", excerpt()))?;
    let v: Value = serde_json::from_str(candidate)
        .map_err(|e| format!("the judge's reply is not valid JSON ({e}): {:?}", excerpt()))?;
    let mut scores = [0.0; 4];
    for (slot, (name, _)) in scores.iter_mut().zip(WEIGHTS) {
        let x = match v.get(name) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "the judge's reply has no number for `{name}`: {:?}",
                excerpt()
            )
        })?;
        if !(0.0..=10.0).contains(&x) {
            return Err(format!("the judge scored `{name}` {x}, outside 0 to 10"));
        }
        *slot = x;
    }
    let total = scores
        .iter()
        .zip(WEIGHTS)
        .map(|(s, (_, w))| s / 10.0 * w)
        .sum::<f64>();
    Ok(JudgeScores {
        executability: scores[0],
        answer_quality: scores[1],
        alignment: scores[2],
        technical: scores[3],
        total: (total * 1e6).round() / 1e6,
        rationale: v
            .get("rationale")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// Ask `model` to judge `t`.
pub async fn judge(model: &dyn Model, task: &Task, t: &Trajectory) -> Result<JudgeScores, String> {
    let reply = model
        .complete(&request(task, t))
        .await
        .map_err(|e| e.to_string())?;
    parse_reply(&reply.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_total() {
        let s = parse_reply(
            r#"{"executability": 10, "answer_quality": 10, "alignment": 10, "technical": 10}"#,
        )
        .unwrap();
        assert_eq!(s.total, 1.0);
        let s = parse_reply("Sure:\n```json\n{\"executability\": 1, \"answer_quality\": 9, \"alignment\": 9, \"technical\": \"3\", \"rationale\": \"errors\"}\n```").unwrap();
        assert_eq!(s.total, 0.52);
        assert_eq!(s.rationale, "errors");
        let s = parse_reply(
            r#"{"executability": 6, "answer_quality": 6, "alignment": 6, "technical": 6}"#,
        )
        .unwrap();
        assert!((s.total - DEFAULT_THRESHOLD).abs() < 1e-9);
    }

    #[test]
    fn unreadable_replies_are_errors() {
        assert!(
            parse_reply("looks good to me")
                .unwrap_err()
                .contains("no JSON object")
        );
        assert!(
            parse_reply(r#"{"executability": 9}"#)
                .unwrap_err()
                .contains("answer_quality")
        );
        assert!(
            parse_reply(
                r#"{"executability": 11, "answer_quality": 1, "alignment": 1, "technical": 1}"#
            )
            .unwrap_err()
            .contains("outside 0 to 10")
        );
    }
}
