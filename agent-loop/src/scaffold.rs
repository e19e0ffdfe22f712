//! Scaffolds: how a model's replies become actions and how observations go back.
//!
//! * [`React`] — the reference's tag protocol ([`crate::protocol`]): `<python>` runs code,
//!   `<answer>` finishes, observations are `<information>` user messages, generation stops
//!   at the first closing tag.
//! * [`Tools`] — the same loop over OpenAI tool calling, for models trained on tools: a
//!   `python` tool (argument `code`) and an `answer` tool (argument `answer`). A reply
//!   without tool calls but with text is taken as the final answer (its `<answer>` tag if
//!   it has one, else the whole text): tool-trained models often end that way, and a
//!   final message is what the OpenAI tool-calling convention means by "done".

use dsbox_tasks::RenderedPrompt;
use serde_json::{Value, json};

use crate::model::{ChatRequest, Completion, ImageRef, Message, ToolDef};
use crate::protocol::{self, NO_ACTION_MESSAGE, STOP_SEQUENCES};

/// Which scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaffoldKind {
    React,
    Tools,
}

impl ScaffoldKind {
    pub fn build(self) -> Box<dyn Scaffold> {
        match self {
            ScaffoldKind::React => Box::new(React),
            ScaffoldKind::Tools => Box::new(Tools),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScaffoldKind::React => "react",
            ScaffoldKind::Tools => "tools",
        }
    }
}

impl std::str::FromStr for ScaffoldKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "react" => Ok(ScaffoldKind::React),
            "tools" => Ok(ScaffoldKind::Tools),
            other => Err(format!(
                "unknown scaffold `{other}`: use `react` (tags) or `tools` (tool calling)"
            )),
        }
    }
}

/// One thing a reply asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run code; `call_id` for tool calls.
    Execute {
        code: String,
        call_id: Option<String>,
    },
    /// A tool call that cannot be carried out; the message goes back to the model.
    Invalid { call_id: String, message: String },
}

/// A reply read by a scaffold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreted {
    /// What goes into the conversation.
    pub assistant: Message,
    /// The final answer, if the reply gives one (then nothing is executed).
    pub answer: Option<String>,
    pub steps: Vec<Step>,
}

/// How replies become actions and observations become messages.
pub trait Scaffold: Send + Sync {
    fn kind(&self) -> ScaffoldKind;
    /// The conversation's first messages.
    fn initial_messages(&self, prompt: &RenderedPrompt) -> Vec<Message>;
    /// The request for the next reply.
    fn request(&self, messages: &[Message], multimodal: bool) -> ChatRequest;
    fn interpret(&self, completion: &Completion) -> Interpreted;
    /// The observation of a cell (its cleaned output and figures).
    fn observation(&self, call_id: Option<&str>, text: &str, images: Vec<ImageRef>) -> Message;
    /// The observation when the code could not be run at all.
    fn execution_error(&self, call_id: Option<&str>, detail: &str) -> Message;
    /// The reply to a reply with neither code nor an answer.
    fn no_action(&self) -> Message;
}

/// The reference's tag protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct React;

impl Scaffold for React {
    fn kind(&self) -> ScaffoldKind {
        ScaffoldKind::React
    }

    fn initial_messages(&self, prompt: &RenderedPrompt) -> Vec<Message> {
        vec![
            Message::system(prompt.system.clone()),
            Message::user(prompt.user.clone()),
        ]
    }

    fn request(&self, messages: &[Message], multimodal: bool) -> ChatRequest {
        ChatRequest {
            messages: messages.to_vec(),
            stop: STOP_SEQUENCES.iter().map(|s| s.to_string()).collect(),
            multimodal,
            ..ChatRequest::default()
        }
    }

    fn interpret(&self, completion: &Completion) -> Interpreted {
        let action = protocol::parse_action(&completion.text);
        let steps = match (&action.answer, action.code) {
            (None, Some(code)) => vec![Step::Execute {
                code,
                call_id: None,
            }],
            _ => Vec::new(),
        };
        Interpreted {
            assistant: Message::assistant(action.text),
            answer: action.answer,
            steps,
        }
    }

    fn observation(&self, _call_id: Option<&str>, text: &str, images: Vec<ImageRef>) -> Message {
        let mut m = Message::user(protocol::information(text));
        m.images = images;
        m
    }

    fn execution_error(&self, _call_id: Option<&str>, detail: &str) -> Message {
        Message::user(protocol::execution_error(detail))
    }

    fn no_action(&self) -> Message {
        Message::user(NO_ACTION_MESSAGE)
    }
}

/// OpenAI tool calling with `python` and `answer` tools.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tools;

/// Appended to the system prompt, which describes the tag protocol.
pub const TOOLS_NOTE: &str = "\n\nThis conversation uses function calling instead of tags: to run code, call the `python` tool with the code; to finish, call the `answer` tool with your final answer (formatted as the instructions say). The output of each call comes back as the tool's result.";

/// The reply to a reply with neither a tool call nor text.
pub const TOOLS_NO_ACTION: &str = "Your reply had no tool call and no text. Call the `python` tool to run code, or the `answer` tool to give your final answer.";

fn tool_defs() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "python".into(),
            description: "Run Python code in a persistent kernel (state is kept between calls) and return its output.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The Python code to run."}},
                "required": ["code"],
            }),
        },
        ToolDef {
            name: "answer".into(),
            description: "Give the final answer and end the task.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"answer": {"type": "string", "description": "The final answer, in the format the instructions ask for."}},
                "required": ["answer"],
            }),
        },
    ]
}

/// The string argument `key` of a tool call (numbers and lists as JSON text).
fn argument(arguments: &str, key: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("the arguments are not a JSON object ({e}): {arguments}"))?;
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err(format!("the arguments have no `{key}`: {arguments}")),
        Some(other) => Ok(other.to_string()),
    }
}

impl Scaffold for Tools {
    fn kind(&self) -> ScaffoldKind {
        ScaffoldKind::Tools
    }

    fn initial_messages(&self, prompt: &RenderedPrompt) -> Vec<Message> {
        vec![
            Message::system(format!("{}{TOOLS_NOTE}", prompt.system)),
            Message::user(prompt.user.clone()),
        ]
    }

    fn request(&self, messages: &[Message], multimodal: bool) -> ChatRequest {
        ChatRequest {
            messages: messages.to_vec(),
            tools: tool_defs(),
            multimodal,
            ..ChatRequest::default()
        }
    }

    fn interpret(&self, completion: &Completion) -> Interpreted {
        let mut assistant = Message::assistant(completion.text.clone());
        assistant.tool_calls = completion.tool_calls.clone();
        if completion.tool_calls.is_empty() {
            let text = completion.text.trim();
            let answer = (!text.is_empty())
                .then(|| protocol::extract_answer(text).unwrap_or_else(|| text.to_owned()));
            return Interpreted {
                assistant,
                answer,
                steps: Vec::new(),
            };
        }
        let mut steps = Vec::new();
        let mut answer = None;
        for call in &completion.tool_calls {
            match call.name.as_str() {
                "answer" => match argument(&call.arguments, "answer") {
                    Ok(a) => {
                        answer = Some(a.trim().to_owned());
                        break;
                    }
                    Err(message) => steps.push(Step::Invalid {
                        call_id: call.id.clone(),
                        message,
                    }),
                },
                "python" => match argument(&call.arguments, "code") {
                    Ok(code) => steps.push(Step::Execute {
                        code,
                        call_id: Some(call.id.clone()),
                    }),
                    Err(message) => steps.push(Step::Invalid {
                        call_id: call.id.clone(),
                        message,
                    }),
                },
                other => steps.push(Step::Invalid {
                    call_id: call.id.clone(),
                    message: format!("there is no tool `{other}`: use `python` or `answer`"),
                }),
            }
        }
        if answer.is_some() {
            steps.clear();
        }
        Interpreted {
            assistant,
            answer,
            steps,
        }
    }

    fn observation(&self, call_id: Option<&str>, text: &str, images: Vec<ImageRef>) -> Message {
        let mut m = Message::tool(call_id.unwrap_or_default(), text);
        m.images = images;
        m
    }

    fn execution_error(&self, call_id: Option<&str>, detail: &str) -> Message {
        Message::tool(
            call_id.unwrap_or_default(),
            format!("Code execution error: {detail}"),
        )
    }

    fn no_action(&self) -> Message {
        Message::user(TOOLS_NO_ACTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Role, ToolCall};

    fn reply(text: &str) -> Completion {
        Completion {
            text: text.into(),
            finish_reason: "stop".into(),
            ..Completion::default()
        }
    }

    #[test]
    fn react_answer_means_nothing_runs() {
        let i = React.interpret(&reply("<python>print(1)</python>"));
        assert_eq!(
            i.steps,
            vec![Step::Execute {
                code: "print(1)".into(),
                call_id: None
            }]
        );
        // An answer before a code block: done, nothing is executed.
        let i = React.interpret(&reply("<answer>7</answer><python>print(1)</python>"));
        assert_eq!(i.answer.as_deref(), Some("7"));
        assert!(i.steps.is_empty());
        let req = React.request(&[Message::user("q")], false);
        assert_eq!(req.stop, vec!["</python>", "</answer>"]);
    }

    #[test]
    fn tools_calls_become_steps() {
        let mut c = reply("");
        c.tool_calls = vec![
            ToolCall {
                id: "a".into(),
                name: "python".into(),
                arguments: r#"{"code": "x = 1"}"#.into(),
            },
            ToolCall {
                id: "b".into(),
                name: "shell".into(),
                arguments: "{}".into(),
            },
            ToolCall {
                id: "c".into(),
                name: "python".into(),
                arguments: "not json".into(),
            },
        ];
        let i = Tools.interpret(&c);
        assert_eq!(i.answer, None);
        assert_eq!(i.steps.len(), 3);
        assert!(
            matches!(&i.steps[1], Step::Invalid { message, .. } if message.contains("no tool `shell`"))
        );
        assert!(
            matches!(&i.steps[2], Step::Invalid { message, .. } if message.contains("not a JSON object"))
        );
        assert_eq!(i.assistant.tool_calls.len(), 3);

        c.tool_calls = vec![ToolCall {
            id: "d".into(),
            name: "answer".into(),
            arguments: r#"{"answer": 0.2}"#.into(),
        }];
        assert_eq!(Tools.interpret(&c).answer.as_deref(), Some("0.2"));
        // A final message without tool calls is the answer.
        assert_eq!(
            Tools
                .interpret(&reply("The result: <answer>B</answer>"))
                .answer
                .as_deref(),
            Some("B")
        );
        assert_eq!(Tools.interpret(&reply("  ")).answer, None);
        let obs = Tools.observation(Some("a"), "out", Vec::new());
        assert_eq!(obs.role, Role::Tool);
        assert_eq!(obs.tool_call_id.as_deref(), Some("a"));
        assert_eq!(Tools.request(&[], false).tools.len(), 2);
    }
}
