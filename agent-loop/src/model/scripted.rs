//! An in-process model whose replies come from a closure or from per-question programs.
//!
//! `dsbox demo` and `dsbox bench eval` use it instead of an LLM: a [`Program`] is the code
//! cells an analyst would run for one question; the last cell prints `ANSWER: <value>`,
//! and the model's final reply takes the value from that output, so every answer it gives
//! was computed by code in the sandbox from the task's data.

use std::sync::Arc;
use std::time::Instant;

use regex::Regex;
use serde_json::json;

use super::{BoxFuture, ChatRequest, Completion, Model, ModelError, Role, ToolCall, Usage};

type ReplyFn = dyn Fn(&ChatRequest) -> Result<Completion, ModelError> + Send + Sync;

/// The code an analyst runs for one question, cell by cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Texts that identify the task: all of them are in its first user message (the
    /// question, and e.g. a data path when two tasks ask the same question).
    pub matches: Vec<String>,
    /// The cells, in order; the output of the last one holds a line `ANSWER: <value>`.
    pub cells: Vec<String>,
}

/// A model that answers from a script, instantly.
#[derive(Clone)]
pub struct ScriptedModel {
    name: String,
    reply: Arc<ReplyFn>,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Rough token count (4 characters per token), so scripted runs report plausible
/// token figures; real models report their own.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The value of the last `ANSWER: <value>` line in the most recent observation (the
/// last user or tool message).
pub fn answer_from_last_output(request: &ChatRequest) -> Option<String> {
    static ANSWER: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = ANSWER.get_or_init(|| Regex::new(r"ANSWER:[ \t]*([^\n]*)").expect("valid regex"));
    let last = request
        .messages
        .iter()
        .rev()
        .find(|m| matches!(m.role, Role::User | Role::Tool))?;
    re.captures_iter(&last.content)
        .last()
        .map(|c| c[1].trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl ScriptedModel {
    /// The reply to `request`, computed synchronously (what `complete` returns).
    pub fn respond(&self, request: &ChatRequest) -> Result<Completion, ModelError> {
        (self.reply)(request)
    }

    /// A model whose reply text to each request is `reply(request)`.
    pub fn new(
        name: impl Into<String>,
        reply: impl Fn(&ChatRequest) -> Result<String, ModelError> + Send + Sync + 'static,
    ) -> ScriptedModel {
        ScriptedModel {
            name: name.into(),
            reply: Arc::new(move |req: &ChatRequest| {
                let text = reply(req)?;
                Ok(completion(req, text, Vec::new()))
            }),
        }
    }

    /// A model that runs `programs`: for the question a request is about, the next cell
    /// (as `<python>` or, when the request offers tools, a `python` tool call), and after
    /// the last cell the answer that cell printed.
    pub fn from_programs(name: impl Into<String>, programs: Vec<Program>) -> ScriptedModel {
        let programs = Arc::new(programs);
        ScriptedModel {
            name: name.into(),
            reply: Arc::new(move |req: &ChatRequest| {
                let first_user = req
                    .messages
                    .iter()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.as_str())
                    .unwrap_or("");
                let program = programs
                    .iter()
                    .find(|p| p.matches.iter().all(|m| first_user.contains(m.as_str())))
                    .ok_or_else(|| {
                        ModelError::Scripted(format!(
                            "no program for this question: {}",
                            first_user.lines().nth(1).unwrap_or(first_user)
                        ))
                    })?;
                let step = req
                    .messages
                    .iter()
                    .filter(|m| m.role == Role::Assistant)
                    .count();
                let tools = !req.tools.is_empty();
                if let Some(cell) = program.cells.get(step) {
                    return Ok(if tools {
                        let call = ToolCall {
                            id: format!("call_{step}"),
                            name: "python".into(),
                            arguments: json!({ "code": cell }).to_string(),
                        };
                        completion(req, String::new(), vec![call])
                    } else {
                        completion(req, format!("<python>\n{cell}\n</python>"), Vec::new())
                    });
                }
                let answer = answer_from_last_output(req)
                    .unwrap_or_else(|| "no answer: the computation failed".into());
                Ok(if tools {
                    let call = ToolCall {
                        id: format!("call_{step}"),
                        name: "answer".into(),
                        arguments: json!({ "answer": answer }).to_string(),
                    };
                    completion(req, String::new(), vec![call])
                } else {
                    completion(req, format!("<answer>{answer}</answer>"), Vec::new())
                })
            }),
        }
    }
}

fn completion(req: &ChatRequest, text: String, tool_calls: Vec<ToolCall>) -> Completion {
    let prompt: u64 = req
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    let completion_tokens = estimate_tokens(&text)
        + tool_calls
            .iter()
            .map(|c| estimate_tokens(&c.arguments))
            .sum::<u64>();
    let finish_reason = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    Completion {
        text,
        tool_calls,
        finish_reason: finish_reason.into(),
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens,
            total_tokens: prompt + completion_tokens,
        },
        attempts: 1,
        latency: Default::default(),
    }
}

impl Model for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let started = Instant::now();
            let mut c = (self.reply)(request)?;
            c.latency = started.elapsed();
            Ok(c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Message;
    use super::*;

    fn program() -> Program {
        Program {
            matches: vec!["mean of x".into()],
            cells: vec![
                "x = [1, 2, 3]".into(),
                "print('ANSWER:', sum(x) / 3)".into(),
            ],
        }
    }

    #[tokio::test]
    async fn programs_step_through_cells_then_answer_from_output() {
        let model = ScriptedModel::from_programs("scripted", vec![program()]);
        let mut req = ChatRequest {
            messages: vec![
                Message::system("sys"),
                Message::user("QUESTION:\nWhat is the mean of x?"),
            ],
            ..ChatRequest::default()
        };
        let c = model.complete(&req).await.unwrap();
        assert_eq!(c.text, "<python>\nx = [1, 2, 3]\n</python>");
        req.messages.push(Message::assistant(c.text));
        req.messages
            .push(Message::user("<information></information>"));
        let c = model.complete(&req).await.unwrap();
        assert!(c.text.contains("sum(x) / 3"));
        req.messages.push(Message::assistant(c.text));
        req.messages.push(Message::user(
            "<information>[stdout] ANSWER: 2.0\n</information>",
        ));
        let c = model.complete(&req).await.unwrap();
        assert_eq!(c.text, "<answer>2.0</answer>");
        assert!(c.usage.prompt_tokens > 0);
    }

    #[tokio::test]
    async fn unknown_question_is_an_error() {
        let model = ScriptedModel::from_programs("scripted", vec![program()]);
        let req = ChatRequest {
            messages: vec![Message::user("QUESTION:\nsomething else")],
            ..ChatRequest::default()
        };
        let err = model.complete(&req).await.unwrap_err();
        assert!(err.to_string().contains("no program"), "{err}");
    }
}
