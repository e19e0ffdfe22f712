//! Reading a generator's proposals: the reference's numbered `Query: … Answer: …` list,
//! and the variants models actually write.
//!
//! Accepted (case-insensitive; markdown bold and list markers are ignored):
//! * labels `Query:` / `Question:` / `Q:` (optionally numbered, `Query 2:`), `Answer:` /
//!   `A:` / `Final answer:`, `Answer format:` / `Format:`, and `Metric:`;
//! * items numbered `1.`, `1)`, `(1)`, `- `, or a numbered line without a label
//!   (`1. What is …?` followed by `Answer: …`);
//! * several labels on one line (`1. Query: … Answer: 42`);
//! * continuation lines (a question over several lines, multiple-choice options); a blank
//!   line ends the field;
//! * a JSON array of objects with `query`/`question` and `answer` (optionally
//!   `format`/`answer_format`, `metric`), bare or in a ```` ```json ```` fence.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// One proposed item, as written (not yet validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proposal {
    pub query: String,
    pub answer: Option<String>,
    /// How the answer must be written (becomes the task's answer guideline).
    pub format: Option<String>,
    /// A metric hint (`exact_match`, `list_match(tolerance=0.01)`, …).
    pub metric: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Query,
    Answer,
    Format,
    Metric,
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid proposal regex"))
}

/// A labelled line: optional list marker / number, then a label and a colon.
fn label_line() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"(?i)^\s*(?:[-*•]\s*)?(?:\(?\d{1,3}[.):]\s*|#{1,6}\s*)?(?P<label>answer[ _-]?format|final[ _]answer|ground[ _]truth|question|query|answer|format|metric|q|a)\s*(?:\d{1,3})?\s*[:：]\s*(?P<rest>.*)$",
    )
}

/// A numbered line without a label: `1. What is …`.
fn numbered_line() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^\s*\(?\d{1,3}[.)]\s+(?P<rest>\S.*)$")
}

/// A label inside a line (`… Answer: 42`). Plain `format:` is not one: questions say
/// "write it in this format: …".
fn inline_label() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"(?i)(?:^|\s)(?P<label>answer[ _-]?format|final[ _]answer|answer|metric)\s*[:：]\s*",
    )
}

fn field_of(label: &str) -> Field {
    let l = label.to_ascii_lowercase().replace(['_', '-'], " ");
    match l.as_str() {
        "question" | "query" | "q" => Field::Query,
        "answer" | "a" | "final answer" | "ground truth" => Field::Answer,
        "metric" => Field::Metric,
        _ => Field::Format,
    }
}

#[derive(Default)]
struct Builder {
    items: Vec<Proposal>,
    current: Option<Proposal>,
    field: Option<Field>,
}

impl Builder {
    fn finish(&mut self) {
        if let Some(p) = self.current.take()
            && !p.query.trim().is_empty()
        {
            self.items.push(p);
        }
        self.field = None;
    }

    fn start(&mut self, query: &str) {
        self.finish();
        self.current = Some(Proposal::default());
        self.field = Some(Field::Query);
        self.append(query);
    }

    fn set(&mut self, field: Field, text: &str) {
        if field == Field::Query {
            self.start(text);
            return;
        }
        let Some(p) = self.current.as_mut() else {
            // An answer before any query: nothing to attach it to.
            self.field = None;
            return;
        };
        let slot = match field {
            Field::Answer => &mut p.answer,
            Field::Format => &mut p.format,
            Field::Metric => &mut p.metric,
            Field::Query => unreachable!("handled above"),
        };
        // A repeated label starts the value over (the last one wins).
        *slot = Some(String::new());
        self.field = Some(field);
        self.append(text);
    }

    fn append(&mut self, text: &str) {
        let (Some(p), Some(field)) = (self.current.as_mut(), self.field) else {
            return;
        };
        let slot = match field {
            Field::Query => &mut p.query,
            Field::Answer => p.answer.get_or_insert_with(String::new),
            Field::Format => p.format.get_or_insert_with(String::new),
            Field::Metric => p.metric.get_or_insert_with(String::new),
        };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if !slot.is_empty() {
            slot.push('\n');
        }
        slot.push_str(text);
    }

    /// A line's content after its leading label: split at inline labels.
    fn content(&mut self, first: Field, rest: &str) {
        let mut field = first;
        let mut start = 0;
        for c in inline_label().captures_iter(rest) {
            let (Some(whole), Some(label)) = (c.get(0), c.name("label")) else {
                continue;
            };
            let piece = &rest[start..whole.start()];
            if start == 0 {
                self.set(field, piece);
            } else {
                self.append(piece);
            }
            field = field_of(label.as_str());
            start = whole.end();
            self.set(field, "");
        }
        let piece = &rest[start..];
        if start == 0 {
            self.set(field, piece);
        } else {
            self.append(piece);
        }
    }
}

/// Markdown emphasis around labels (`**Query:**`, `__Answer__:`) is dropped.
fn unmark(line: &str) -> String {
    line.replace("**", "").replace("__", "")
}

/// Strip wrapping backticks or quotes, and a full stop after a plain number.
fn clean_value(v: &str) -> String {
    let mut v = v.trim();
    for (open, close) in [("`", "`"), ("\"", "\""), ("'", "'")] {
        if v.len() >= 2
            && v.starts_with(open)
            && v.ends_with(close)
            && !v[1..v.len() - 1].contains(close)
        {
            v = v[1..v.len() - 1].trim();
        }
    }
    if let Some(stripped) = v.strip_suffix('.')
        && stripped.parse::<f64>().is_ok()
    {
        v = stripped;
    }
    v.to_owned()
}

fn from_json(text: &str) -> Option<Vec<Proposal>> {
    static FENCE: OnceLock<Regex> = OnceLock::new();
    let candidates: Vec<&str> = std::iter::once(text.trim())
        .chain(
            re(&FENCE, r"(?s)```(?:json)?\s*(.*?)```")
                .captures_iter(text)
                .filter_map(|c| c.get(1).map(|m| m.as_str().trim())),
        )
        .collect();
    for c in candidates {
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(c) else {
            continue;
        };
        let text_of = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => dsbox_tasks::task::value_to_py_str(other),
        };
        let props: Vec<Proposal> = items
            .iter()
            .filter_map(|item| {
                let obj = item.as_object()?;
                let get = |keys: &[&str]| keys.iter().find_map(|k| obj.get(*k)).and_then(text_of);
                Some(Proposal {
                    query: get(&["query", "question"])?.trim().to_owned(),
                    answer: get(&["answer"]).map(|a| clean_value(&a)),
                    format: get(&["format", "answer_format"]),
                    metric: get(&["metric"]),
                })
            })
            .filter(|p| !p.query.is_empty())
            .collect();
        if !props.is_empty() {
            return Some(props);
        }
    }
    None
}

/// Every item in `text`, in order. Items without an answer are kept (the caller rejects
/// them with a reason); lines before the first item are ignored.
pub fn parse_proposals(text: &str) -> Vec<Proposal> {
    if let Some(p) = from_json(text) {
        return p;
    }
    let mut b = Builder::default();
    for raw in text.lines() {
        let line = unmark(raw);
        if line.trim().is_empty() {
            b.field = None;
            continue;
        }
        if let Some(c) = label_line().captures(&line) {
            let field = field_of(&c["label"]);
            b.content(field, c.name("rest").map_or("", |m| m.as_str()));
            continue;
        }
        if let Some(c) = numbered_line().captures(&line) {
            // A numbered line inside a question (its options `1) …`) continues it when it
            // has no answer yet; otherwise it starts the next item.
            let inside_open_query = b.field == Some(Field::Query)
                && b.current.as_ref().is_some_and(|p| p.answer.is_none());
            if !inside_open_query {
                b.start("");
                b.content(Field::Query, &c["rest"]);
                continue;
            }
        }
        b.append(&line);
    }
    b.finish();
    for p in &mut b.items {
        p.query = p.query.trim().to_owned();
        p.answer = p
            .answer
            .take()
            .map(|a| clean_value(&a))
            .filter(|a| !a.is_empty());
        p.format = p
            .format
            .take()
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty());
        p.metric = p
            .metric
            .take()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty());
    }
    b.items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qa(p: &Proposal) -> (&str, Option<&str>) {
        (p.query.as_str(), p.answer.as_deref())
    }

    #[test]
    fn the_reference_format() {
        let text = "Here are the questions.\n\n1. Query: What is the mean of `price`? Round to 2 decimals.\n   Answer: 12.35\n2. Query: How many rows are there?\n   Answer: 400\n";
        let p = parse_proposals(text);
        assert_eq!(p.len(), 2);
        assert_eq!(
            qa(&p[0]),
            (
                "What is the mean of `price`? Round to 2 decimals.",
                Some("12.35")
            )
        );
        assert_eq!(qa(&p[1]), ("How many rows are there?", Some("400")));
    }

    #[test]
    fn variants_models_write() {
        // Bold labels, numbered labels, format and metric lines.
        let text = "**1. Query:** Which region sold most?\n**Answer:** North\n**Answer format:** a region name\n\nQuery 2: Mean and max of x?\nAnswer: @mean[2.5] @max[4]\nMetric: list_match\n";
        let p = parse_proposals(text);
        assert_eq!(p.len(), 2);
        assert_eq!(qa(&p[0]), ("Which region sold most?", Some("North")));
        assert_eq!(p[0].format.as_deref(), Some("a region name"));
        assert_eq!(
            qa(&p[1]),
            ("Mean and max of x?", Some("@mean[2.5] @max[4]"))
        );
        assert_eq!(p[1].metric.as_deref(), Some("list_match"));

        // One line per item; Q/A labels; a numbered question without a label.
        let text = "1. Query: What is 2+2? Answer: 4\n2) Q: Largest value?\nA: `9.5`\n3. What share of rows is null?\n   Answer: 0.10.\n";
        let p = parse_proposals(text);
        assert_eq!(
            p.iter().map(qa).collect::<Vec<_>>(),
            vec![
                ("What is 2+2?", Some("4")),
                ("Largest value?", Some("9.5")),
                ("What share of rows is null?", Some("0.10")),
            ]
        );
    }

    #[test]
    fn multi_line_questions_keep_their_options() {
        let text = "1. Query: Which group converts more?\nA) treatment\nB) control\nAnswer: A\n";
        let p = parse_proposals(text);
        assert_eq!(p.len(), 1);
        // `A)` is an option line, not an `A:` answer label.
        assert_eq!(
            p[0].query,
            "Which group converts more?\nA) treatment\nB) control"
        );
        assert_eq!(p[0].answer.as_deref(), Some("A"));
    }

    #[test]
    fn json_lists_are_accepted() {
        let text = "```json\n[{\"query\": \"Rows?\", \"answer\": 400}, {\"question\": \"Cols?\", \"answer\": \"5\", \"format\": \"integer\"}]\n```";
        let p = parse_proposals(text);
        assert_eq!(p.len(), 2);
        assert_eq!(qa(&p[0]), ("Rows?", Some("400")));
        assert_eq!(p[1].format.as_deref(), Some("integer"));
    }

    #[test]
    fn prose_without_items_gives_nothing() {
        assert!(parse_proposals("I explored the data. It has 5 columns and 400 rows.").is_empty());
        assert!(parse_proposals("").is_empty());
        // An answer without any question is dropped; a question without an answer is kept
        // (the caller rejects it, naming why).
        let p = parse_proposals("Answer: 4\n1. Query: How many?\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].answer, None);
    }
}
