//! A scripted analyst for the synth pipeline, so it runs end to end without an LLM (the
//! tests, `dsbox bench synth`). It plays the three roles, told apart by the system prompt:
//!
//! * **generator** ([`super::queries::GENERATOR_SYSTEM`]): loads the seed's first CSV and
//!   lists its numeric columns; computes `n` statistics, each of another column with
//!   another statistic (mean, median, maximum, minimum, standard deviation); then proposes `n` questions in the reference's
//!   numbered `Query: … Answer: …` list with the values its code printed (a row count,
//!   distinct values and the most frequent value when the file has no numeric column);
//! * **solver** (any other prompt): recognises those questions, loads the file (the first
//!   cell carries `# attempt N`, N counting the rollouts of that question, so a test can
//!   script one rollout differently), computes the statistic and prints `ANSWER: value`,
//!   then answers with what was printed;
//! * **judge** ([`super::judge::JUDGE_SYSTEM`]): scores a transcript with an error in an
//!   observation low on executability (total 0.52), a clean one high (0.89).
//!
//! Every answer it gives was computed by code in a sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;
use serde_json::Value;

use super::judge::JUDGE_SYSTEM;
use super::queries::GENERATOR_SYSTEM;
use crate::fake::{FakeReply, Script};
use crate::model::{ChatRequest, Message, Role, ScriptedModel};

/// Which role a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Generator,
    Solver,
    Judge,
}

/// (word in the question, pandas method).
const STATS: [(&str, &str); 5] = [
    ("mean", "mean"),
    ("median", "median"),
    ("maximum", "max"),
    ("minimum", "min"),
    ("standard deviation", "std"),
];

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid scripted regex"))
}

fn py(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

/// Chat messages from an OpenAI request body's `messages`.
pub fn messages_from_json(values: &[Value]) -> Vec<Message> {
    values
        .iter()
        .map(|m| {
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            match m.get("role").and_then(Value::as_str) {
                Some("system") => Message::system(content),
                Some("assistant") => Message::assistant(content),
                Some("tool") => Message::tool("", content),
                _ => Message::user(content),
            }
        })
        .collect()
}

/// The role a conversation asks for.
pub fn part(messages: &[Message]) -> Part {
    match messages.iter().find(|m| m.role == Role::System) {
        Some(m) if m.content.starts_with(JUDGE_SYSTEM) => Part::Judge,
        Some(m) if m.content.starts_with(GENERATOR_SYSTEM) => Part::Generator,
        _ => Part::Solver,
    }
}

fn first_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str())
}

fn last_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| matches!(m.role, Role::User | Role::Tool))
        .map_or("", |m| m.content.as_str())
}

/// Replies so far (the next reply's turn number, minus one).
pub fn turn(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

/// The QUESTION section of the task prompt.
pub fn question(messages: &[Message]) -> String {
    let user = first_user(messages);
    let body = user.split_once("QUESTION:\n").map_or(user, |(_, b)| b);
    body.split("\n\n").next().unwrap_or("").trim().to_owned()
}

/// The rollout number the solver wrote into its first cell (`# attempt N`).
pub fn attempt(messages: &[Message]) -> Option<u32> {
    static R: OnceLock<Regex> = OnceLock::new();
    let first = messages.iter().find(|m| m.role == Role::Assistant)?;
    re(&R, r"# attempt (\d+)")
        .captures(&first.content)
        .and_then(|c| c[1].parse().ok())
}

/// The value of the last `ANSWER: …` line in the latest observation.
pub fn printed_answer(messages: &[Message]) -> Option<String> {
    crate::model::answer_from_last_output(&ChatRequest {
        messages: vec![Message::user(last_user(messages))],
        ..ChatRequest::default()
    })
}

/// A question the solver knows: (file, method, column). Methods: a pandas statistic,
/// `rows`, `nunique`, `mode`.
fn parse_question(q: &str) -> Option<(String, String, Option<String>)> {
    static STAT: OnceLock<Regex> = OnceLock::new();
    static ROWS: OnceLock<Regex> = OnceLock::new();
    static NUNIQUE: OnceLock<Regex> = OnceLock::new();
    static MODE: OnceLock<Regex> = OnceLock::new();
    let stat = re(
        &STAT,
        r"What is the (mean|median|maximum|minimum|standard deviation) of the column `([^`]+)` in (\S+)\?",
    );
    if let Some(c) = stat.captures(q) {
        let method = STATS.iter().find(|(w, _)| *w == &c[1])?.1;
        return Some((c[3].to_owned(), method.to_owned(), Some(c[2].to_owned())));
    }
    if let Some(c) = re(
        &NUNIQUE,
        r"How many distinct values does the column `([^`]+)` in (\S+) hold\?",
    )
    .captures(q)
    {
        return Some((c[2].to_owned(), "nunique".to_owned(), Some(c[1].to_owned())));
    }
    if let Some(c) = re(
        &MODE,
        r"Which value occurs most often in `([^`]+)` of (\S+)\?",
    )
    .captures(q)
    {
        return Some((c[2].to_owned(), "mode".to_owned(), Some(c[1].to_owned())));
    }
    re(&ROWS, r"How many rows does (\S+) have\?")
        .captures(q)
        .map(|c| (c[1].to_owned(), "rows".to_owned(), None))
}

/// The code computing one known question's answer (after the file is loaded as `df`).
pub fn answer_cell(method: &str, column: Option<&str>) -> String {
    match (method, column) {
        ("rows", _) | (_, None) => "print('ANSWER:', len(df))".to_owned(),
        ("nunique", Some(col)) => format!("print('ANSWER:', df[{}].nunique())", py(col)),
        ("mode", Some(col)) => format!("print('ANSWER:', df[{}].mode().iloc[0])", py(col)),
        (_, Some(col)) => format!(
            "value = df[{}].{method}()\nprint('ANSWER:', f'{{value:.2f}}')",
            py(col)
        ),
    }
}

/// The generator's plan for a file: `n` (method, column) pairs, each with another
/// statistic and, where there are enough, another column — so the questions differ in
/// more than one word.
fn plan_items(
    n: usize,
    numeric: &[String],
    columns: &[String],
) -> Vec<(&'static str, Option<String>)> {
    let mut plan = Vec::new();
    if numeric.is_empty() {
        plan.push(("rows", None));
        for (i, col) in columns.iter().enumerate().take(n.saturating_sub(1)) {
            plan.push((
                if i % 2 == 0 { "nunique" } else { "mode" },
                Some(col.clone()),
            ));
        }
    } else {
        for i in 0..n {
            plan.push((
                STATS[i % STATS.len()].1,
                Some(numeric[i % numeric.len()].clone()),
            ));
        }
    }
    plan
}

/// The scripted analyst (see the module doc). Shared by every request of a run: it counts
/// the rollouts of each question.
#[derive(Debug, Default)]
pub struct SynthAnalyst {
    attempts: Mutex<HashMap<String, u32>>,
}

impl SynthAnalyst {
    pub fn new() -> SynthAnalyst {
        SynthAnalyst::default()
    }

    /// The reply to a conversation.
    pub fn reply(&self, messages: &[Message]) -> String {
        match part(messages) {
            Part::Judge => judge(messages),
            Part::Generator => generate(messages),
            Part::Solver => self.solve(messages),
        }
    }

    fn solve(&self, messages: &[Message]) -> String {
        let q = question(messages);
        let Some((path, method, column)) = parse_question(&q) else {
            return "<answer>I cannot answer this question.</answer>".into();
        };
        match turn(messages) {
            0 => {
                let n = {
                    let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
                    let n = a.entry(q.clone()).or_insert(0);
                    *n += 1;
                    *n - 1
                };
                format!(
                    "<python>\nimport pandas as pd\ndf = pd.read_csv({})  # attempt {n}\nprint(df.shape)\n</python>",
                    py(&path)
                )
            }
            1 => format!(
                "<python>\n{}\n</python>",
                answer_cell(&method, column.as_deref())
            ),
            _ => format!(
                "<answer>{}</answer>",
                printed_answer(messages)
                    .unwrap_or_else(|| "no answer: the computation failed".into())
            ),
        }
    }

    /// A fake-server script playing this analyst.
    pub fn script(self: &Arc<Self>) -> Script {
        let me = self.clone();
        Script::handler(move |r| FakeReply::text(me.reply(&messages_from_json(r.messages()))))
    }

    /// An in-process model playing this analyst.
    pub fn model(self: &Arc<Self>, name: &str) -> ScriptedModel {
        let me = self.clone();
        ScriptedModel::new(name, move |req: &ChatRequest| Ok(me.reply(&req.messages)))
    }
}

fn generate(messages: &[Message]) -> String {
    static N: OnceLock<Regex> = OnceLock::new();
    static NUMERIC: OnceLock<Regex> = OnceLock::new();
    static COLUMNS: OnceLock<Regex> = OnceLock::new();
    static STAT_LINE: OnceLock<Regex> = OnceLock::new();
    let user = first_user(messages);
    let n: usize = re(&N, r"write (\d+) new")
        .captures(user)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or(3);
    let Some(path) = user
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .find(|p| p.starts_with("/data/") && p.to_lowercase().ends_with(".csv"))
        .map(str::to_owned)
    else {
        return "<answer>The data has no CSV file, so I have no questions.</answer>".into();
    };
    let list = |cell: &'static OnceLock<Regex>, label: &str| -> Vec<String> {
        re(cell, &format!(r"{label}: (\[.*\])"))
            .captures(last_user(messages))
            .and_then(|c| serde_json::from_str(&c[1]).ok())
            .unwrap_or_default()
    };
    match turn(messages) {
        0 => format!(
            "<python>\nimport pandas as pd, json\ndf = pd.read_csv({})\nprint(df.shape)\nprint('NUMERIC:', json.dumps([str(c) for c in df.select_dtypes('number').columns]))\nprint('COLUMNS:', json.dumps([str(c) for c in df.columns]))\n</python>",
            py(&path)
        ),
        1 => {
            let plan: Vec<String> =
                plan_items(n, &list(&NUMERIC, "NUMERIC"), &list(&COLUMNS, "COLUMNS"))
                    .into_iter()
                    .map(|(m, c)| {
                        format!("[{}, {}]", py(m), c.as_deref().map_or("None".into(), py))
                    })
                    .collect();
            format!(
                "<python>\nfor method, col in [{}]:\n    if method == 'rows':\n        value = len(df)\n    elif method == 'nunique':\n        value = int(df[col].nunique())\n    elif method == 'mode':\n        value = str(df[col].mode().iloc[0])\n    else:\n        value = f'{{getattr(df[col], method)():.2f}}'\n    print('STAT', json.dumps([method, col, value]))\n</python>",
                plan.join(", ")
            )
        }
        _ => {
            let mut items = Vec::new();
            for c in re(&STAT_LINE, r"STAT (\[.*\])").captures_iter(last_user(messages)) {
                let Ok(v) = serde_json::from_str::<Vec<Value>>(&c[1]) else {
                    continue;
                };
                let (Some(method), Some(value)) = (v.first().and_then(Value::as_str), v.get(2))
                else {
                    continue;
                };
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if value.contains("nan") || value.trim().is_empty() {
                    continue;
                }
                let k = items.len() + 1;
                let col = v.get(1).and_then(Value::as_str).unwrap_or("");
                items.push(match method {
                    "rows" => format!(
                        "{k}. Query: How many rows does {path} have?\n   Answer: {value}\n   Format: an integer"
                    ),
                    "nunique" => format!(
                        "{k}. Query: How many distinct values does the column `{col}` in {path} hold?\n   Answer: {value}\n   Format: an integer"
                    ),
                    "mode" => format!(
                        "{k}. Query: Which value occurs most often in `{col}` of {path}?\n   Answer: {value}\n   Format: the value as it appears in the file"
                    ),
                    _ => {
                        let word = STATS.iter().find(|(_, m)| *m == method).map_or(method, |(w, _)| w);
                        format!(
                            "{k}. Query: What is the {word} of the column `{col}` in {path}? Round to 2 decimals.\n   Answer: {value}\n   Format: a number rounded to 2 decimals"
                        )
                    }
                });
            }
            format!("<answer>\n{}\n</answer>", items.join("\n"))
        }
    }
}

fn judge(messages: &[Message]) -> String {
    let user = first_user(messages);
    let transcript = user
        .split_once("TRAJECTORY:")
        .map_or(user, |(_, t)| t)
        .split("FINAL ANSWER:")
        .next()
        .unwrap_or("");
    let failed = transcript.contains("Traceback") || transcript.contains("Error:");
    if failed {
        r#"{"executability": 1, "answer_quality": 9, "alignment": 9, "technical": 3, "rationale": "a cell raised an error before the agent recovered"}"#.into()
    } else {
        r#"{"executability": 9, "answer_quality": 9, "alignment": 9, "technical": 8, "rationale": "clean, direct computation"}"#.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::parse::parse_proposals;

    #[test]
    fn the_generator_explores_then_lists_what_it_computed() {
        let prompt = super::super::queries::generation_prompt(
            &dsbox_tasks::Task {
                id: "s/a".into(),
                suite: "s".into(),
                track: dsbox_tasks::Track::Analysis,
                question: "q".into(),
                context: String::new(),
                data: vec![dsbox_tasks::DataFile {
                    path: "/data/s/x.csv".into(),
                    host: Some("/etc/hostname".into()),
                    kind: dsbox_tasks::DataKind::File,
                }],
                submission: None,
                answer: None,
                answer_guideline: None,
                metric: dsbox_tasks::MetricSpec::new("exact_match"),
                metadata: Default::default(),
            },
            2,
        );
        let a = SynthAnalyst::new();
        let mut msgs = vec![Message::system(prompt.system), Message::user(prompt.user)];
        assert_eq!(part(&msgs), Part::Generator);
        let r = a.reply(&msgs);
        assert!(r.contains("pd.read_csv(\"/data/s/x.csv\")"), "{r}");
        msgs.push(Message::assistant(r));
        msgs.push(Message::user(
            "<information>[stdout] (3, 2)\nNUMERIC: [\"price\"]\n</information>",
        ));
        let r = a.reply(&msgs);
        assert!(
            r.contains("[\"mean\", \"price\"], [\"median\", \"price\"]"),
            "{r}"
        );
        msgs.push(Message::assistant(r));
        msgs.push(Message::user(
            "<information>[stdout] STAT [\"mean\", \"price\", \"2.50\"]\nSTAT [\"median\", \"price\", \"2.00\"]\n</information>",
        ));
        let r = a.reply(&msgs);
        let p = parse_proposals(&crate::protocol::extract_answer(&r).unwrap());
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].query,
            "What is the mean of the column `price` in /data/s/x.csv? Round to 2 decimals."
        );
        assert_eq!(p[1].answer.as_deref(), Some("2.00"));

        // The solver answers those questions, numbering its rollouts.
        let solver = |q: &str| {
            vec![
                Message::system("You are an expert data scientist."),
                Message::user(format!("QUESTION:\n{q}\n\nDATASET LOCATIONS:\n")),
            ]
        };
        let mut s = solver(&p[0].query);
        let r0 = a.reply(&s);
        assert!(r0.contains("# attempt 0"), "{r0}");
        assert!(a.reply(&solver(&p[0].query)).contains("# attempt 1"));
        s.push(Message::assistant(r0));
        assert_eq!(attempt(&s), Some(0));
        s.push(Message::user("<information>[stdout] (3, 2)</information>"));
        assert!(a.reply(&s).contains("df[\"price\"].mean()"));
        s.push(Message::assistant("<python>x</python>"));
        s.push(Message::user(
            "<information>[stdout] ANSWER: 2.50\n</information>",
        ));
        assert_eq!(a.reply(&s), "<answer>2.50</answer>");
    }
}
