//! Chat models: the [`Model`] trait, the chat message types shared by the scaffolds and
//! trajectories, and two implementations — [`OpenAiModel`] (any OpenAI-compatible
//! chat-completions server over HTTP) and [`ScriptedModel`] (in-process, for `dsbox demo`,
//! `dsbox bench eval` and tests).

mod openai;
mod scripted;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use openai::{ClientStats, ModelJudge, OpenAiConfig, OpenAiModel};
pub use scripted::{Program, ScriptedModel, answer_from_last_output, estimate_tokens};

/// A boxed, `Send` future (keeps the traits object-safe without async-trait).
pub type BoxFuture<'a, T> = dsbox_tasks::metric::judge::BoxFuture<'a, T>;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// An image attached to a message (a figure a cell produced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// `image/png`, ...
    pub mime: String,
    /// The image file, relative to the run directory (absent when not saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Base64 data, kept in memory only while an episode runs with `--multimodal`.
    #[serde(skip)]
    pub base64: Option<Arc<str>>,
}

/// A tool call made by the model (OpenAI tool calling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (a JSON object, not always valid).
    pub arguments: String,
}

/// One chat message. Serialized as the conversation of a trajectory (the DSGym shape,
/// `{role, content}`, plus tool calls and image files where present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content)
    }

    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Message {
        let mut m = Message::new(Role::Tool, content);
        m.tool_call_id = Some(call_id.into());
        m
    }
}

/// A function the model may call (OpenAI `tools` entry of type `function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One chat-completion request. Sampling settings not given here come from the model's
/// configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDef>,
    /// Stop sequences (the react scaffold stops on `</python>` and `</answer>`).
    pub stop: Vec<String>,
    /// Send images as image parts (OpenAI vision format).
    pub multimodal: bool,
    /// Overrides the configured temperature (judges use 0).
    pub temperature: Option<f64>,
    /// Overrides the configured completion limit.
    pub max_tokens: Option<u32>,
    /// Ask for a JSON object reply (`response_format`).
    pub json: bool,
}

/// Token counts of one or more requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// The model's reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The message text, with a stop tag the server swallowed put back (see
    /// [`restore_stop_tag`]).
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `length`, `tool_calls`, ...
    pub finish_reason: String,
    pub usage: Usage,
    /// HTTP attempts made (1 without retries).
    pub attempts: u32,
    /// Time from the first attempt to the reply, back-off included.
    pub latency: Duration,
}

/// An LLM that completes chats.
pub trait Model: Send + Sync {
    /// The model's name as the server knows it.
    fn name(&self) -> &str;
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>>;
}

impl<M: Model + ?Sized> Model for Arc<M> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        (**self).complete(request)
    }
}

/// Why a model call failed. Each message names the server and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "the model server at {base_url} rejected the API key (HTTP {status}): {}",
        if *key_set { format!("check the key in ${key_env}") } else { format!("no key was sent: set ${key_env} (or name another variable with --api-key-env)") }
    )]
    Unauthorized {
        base_url: String,
        status: u16,
        key_env: String,
        key_set: bool,
    },
    #[error(
        "the model server at {base_url} does not know model `{model}`{}",
        match available {
            Some(names) if !names.is_empty() => format!(": it serves {}; pass one of them with --model", names.join(", ")),
            Some(_) => ": it lists no models".to_owned(),
            None => ": check --model, and that --base-url ends in /v1 (the server did not list its models)".to_owned(),
        }
    )]
    UnknownModel {
        base_url: String,
        model: String,
        available: Option<Vec<String>>,
    },
    #[error(
        "cannot reach the model server at {base_url} ({detail}) after {attempts} attempt(s): is it running? check --base-url"
    )]
    Unreachable {
        base_url: String,
        detail: String,
        attempts: u32,
    },
    #[error(
        "the model server at {base_url} did not answer within {} (attempt {attempts}): raise --request-timeout or check the server's load",
        humantime::format_duration(*after)
    )]
    Timeout {
        base_url: String,
        after: Duration,
        attempts: u32,
    },
    #[error(
        "the model server at {base_url} answered HTTP {status} after {attempts} attempt(s): {body}"
    )]
    Status {
        base_url: String,
        status: u16,
        body: String,
        attempts: u32,
    },
    #[error(
        "the connection to the model server at {base_url} failed ({detail}) after {attempts} attempt(s)"
    )]
    Connection {
        base_url: String,
        detail: String,
        attempts: u32,
    },
    #[error("the model server at {base_url} sent a reply this client cannot read: {detail}")]
    BadResponse { base_url: String, detail: String },
    #[error("scripted model: {0}")]
    Scripted(String),
}

impl ModelError {
    /// A short stable name for error breakdowns.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Unauthorized { .. } => "unauthorized",
            ModelError::UnknownModel { .. } => "unknown-model",
            ModelError::Unreachable { .. } => "unreachable",
            ModelError::Timeout { .. } => "model-timeout",
            ModelError::Status { .. } => "http-status",
            ModelError::Connection { .. } => "connection",
            ModelError::BadResponse { .. } => "bad-response",
            ModelError::Scripted(_) => "scripted",
        }
    }

    /// Errors that no later request will fix (wrong key, unknown model, server down):
    /// a run stops on them instead of recording every remaining trajectory as failed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ModelError::Unauthorized { .. }
                | ModelError::UnknownModel { .. }
                | ModelError::Unreachable { .. }
        )
    }
}

/// Servers drop the stop sequence they stopped on (`</python>`, `</answer>`). Put it
/// back so the text holds a complete tag, as the protocol parser expects.
///
/// `stop_reason` is vLLM's field naming the sequence; without it (OpenAI, llama.cpp,
/// Ollama) the tag to close is the one opened last and not closed.
pub fn restore_stop_tag(
    text: &str,
    finish_reason: &str,
    stop_reason: Option<&str>,
    stops: &[String],
) -> String {
    if finish_reason != "stop" || stops.is_empty() {
        return text.to_owned();
    }
    if let Some(reason) = stop_reason
        && stops.iter().any(|s| s == reason)
    {
        if text.ends_with(reason) {
            return text.to_owned();
        }
        return format!("{text}{reason}");
    }
    // A reply that ends with a closing tag of its own (a typo such as `</pyhton>`) was
    // ended by the model, not cut at our stop sequence (which the server removes).
    let trimmed = text.trim_end();
    if let Some(open) = trimmed.rfind("</")
        && trimmed.ends_with('>')
        && trimmed[open + 2..trimmed.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return text.to_owned();
    }
    // The stop tag whose opening tag appears last without a closing tag after it.
    let mut best: Option<(usize, &str)> = None;
    for stop in stops {
        let Some(name) = stop.strip_prefix("</").and_then(|s| s.strip_suffix('>')) else {
            continue;
        };
        let open = format!("<{name}>");
        if let Some(pos) = text.rfind(&open)
            && !text[pos..].contains(stop.as_str())
            && best.is_none_or(|(p, _)| pos > p)
        {
            best = Some((pos, stop));
        }
    }
    match best {
        Some((_, stop)) => format!("{text}{stop}"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops() -> Vec<String> {
        vec!["</python>".into(), "</answer>".into()]
    }

    #[test]
    fn stop_tag_is_restored_from_the_open_tag() {
        assert_eq!(
            restore_stop_tag("<python>print(1)\n", "stop", None, &stops()),
            "<python>print(1)\n</python>"
        );
        assert_eq!(
            restore_stop_tag("think <answer>42", "stop", None, &stops()),
            "think <answer>42</answer>"
        );
        // Closed already, or no tag at all: unchanged.
        assert_eq!(
            restore_stop_tag("<python>x</python>", "stop", None, &stops()),
            "<python>x</python>"
        );
        assert_eq!(restore_stop_tag("hello", "stop", None, &stops()), "hello");
        // Cut by the length limit: nothing to restore.
        assert_eq!(
            restore_stop_tag("<python>x", "length", None, &stops()),
            "<python>x"
        );
    }

    #[test]
    fn vllm_stop_reason_wins() {
        assert_eq!(
            restore_stop_tag("<answer>1", "stop", Some("</answer>"), &stops()),
            "<answer>1</answer>"
        );
        // A stop_reason that is not one of ours (e.g. an EOS token id) is ignored.
        assert_eq!(
            restore_stop_tag("<python>x", "stop", Some("<|im_end|>"), &stops()),
            "<python>x</python>"
        );
    }

    #[test]
    fn a_reply_ending_in_its_own_closing_tag_is_left_alone() {
        assert_eq!(
            restore_stop_tag("<python>print(1)</pyhton>", "stop", None, &stops()),
            "<python>print(1)</pyhton>"
        );
        // Code that merely contains `</` is still closed.
        assert_eq!(
            restore_stop_tag("<python>print('</b>' + x)", "stop", None, &stops()),
            "<python>print('</b>' + x)</python>"
        );
    }

    #[test]
    fn the_last_opened_tag_is_closed() {
        assert_eq!(
            restore_stop_tag("<answer>a</answer> <python>y", "stop", None, &stops()),
            "<answer>a</answer> <python>y</python>"
        );
    }
}
