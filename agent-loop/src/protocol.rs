//! The reference's tag protocol (CodeAct/ReAct with tags), as pure functions.
//!
//! * A reply runs code with `<python>CODE</python>` or finishes with
//!   `<answer>TEXT</answer>`. Text after the first `</python>` (else after the first
//!   `</answer>`) is cut off ([`truncate_action`]).
//! * The code is the first `<python>(.*?)</python>`; when it holds a ```` ```python ````
//!   fence, the fence's content ([`extract_code`]). The answer is the first
//!   `<answer>(.*?)</answer>`, trimmed ([`extract_answer`]).
//! * Observations go back as user messages `\n<information>…</information>\n`
//!   ([`information`]); a reply with neither code nor answer gets [`NO_ACTION_MESSAGE`].
//! * Outputs are cleaned per item and joined with `\n` ([`clean_output`]): streams as
//!   `[stdout] text`, results as text/plain (else HTML without tags), errors as
//!   `Name: value` + traceback without ANSI colours, cut to 800 characters. Unlike the
//!   reference, the whole observation is capped (head and tail kept, with a note of how
//!   much was cut) and figures are kept for multimodal models and reports.

use std::sync::OnceLock;

use dsbox_kernel::{OutputItem, Truncation};
use regex::Regex;

/// Turns per episode unless configured otherwise (the reference's default).
pub const DEFAULT_MAX_TURNS: u32 = 15;

/// Error texts (name, value, traceback) are cut to this many characters.
pub const ERROR_TEXT_LIMIT: usize = 800;

/// Observations longer than this (in characters) keep their head and tail.
pub const DEFAULT_OBSERVATION_CAP: usize = 16_000;

/// Stop sequences of the react scaffold: generation ends with the first action.
pub const STOP_SEQUENCES: [&str; 2] = ["</python>", "</answer>"];

/// The user message for a reply with neither code nor an answer.
pub const NO_ACTION_MESSAGE: &str = "Your reply had neither code to run nor a final answer. To run code, put it inside <python>...</python>. To finish, put your final answer inside <answer>...</answer>.";

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid protocol regex"))
}

/// Cut the reply after the first `</python>`, else after the first `</answer>`.
pub fn truncate_action(text: &str) -> &str {
    for tag in ["</python>", "</answer>"] {
        if let Some(pos) = text.find(tag) {
            return &text[..pos + tag.len()];
        }
    }
    text
}

/// The final answer: the first `<answer>(.*?)</answer>`, trimmed.
pub fn extract_answer(text: &str) -> Option<String> {
    static ANSWER: OnceLock<Regex> = OnceLock::new();
    re(&ANSWER, r"(?s)<answer>(.*?)</answer>")
        .captures(text)
        .map(|c| c[1].trim().to_owned())
}

/// The code of the first `<python>(.*?)</python>`; a ```` ```python ```` fence inside it
/// gives the fence's content. Common indentation is removed, so code indented inside the
/// tags still runs.
pub fn extract_code(text: &str) -> Option<String> {
    static PYTHON: OnceLock<Regex> = OnceLock::new();
    static FENCE: OnceLock<Regex> = OnceLock::new();
    let block = re(&PYTHON, r"(?s)<python>(.*?)</python>").captures(text)?;
    let mut code = block.get(1).map_or("", |m| m.as_str());
    if let Some(fence) = re(&FENCE, r"(?s)```python(.*?)```").captures(code) {
        code = fence.get(1).map_or("", |m| m.as_str());
    }
    Some(dedent(code).trim().to_owned())
}

/// Remove the leading whitespace every non-blank line shares.
fn dedent(code: &str) -> String {
    let indent = code
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    if indent == 0 {
        return code.to_owned();
    }
    code.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A reply, cut and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAction {
    /// The reply after truncation (what goes into the conversation).
    pub text: String,
    pub code: Option<String>,
    pub answer: Option<String>,
}

/// Truncate a reply and find its code and answer.
pub fn parse_action(reply: &str) -> ParsedAction {
    let text = truncate_action(reply);
    ParsedAction {
        text: text.to_owned(),
        code: extract_code(text),
        answer: extract_answer(text),
    }
}

/// The observation message for cleaned output.
pub fn information(cleaned: &str) -> String {
    format!("\n<information>{cleaned}</information>\n")
}

/// The observation message when the code could not be run at all.
pub fn execution_error(detail: &str) -> String {
    format!("\n<information>Code execution error: {detail}</information>\n")
}

/// Remove ANSI escape sequences (colours in IPython tracebacks).
pub fn strip_ansi(text: &str) -> String {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    re(&ANSI, r"\x1b\[[0-9;?]*[ -/]*[@-~]")
        .replace_all(text, "")
        .into_owned()
}

/// HTML to text: tags removed, the common entities decoded.
pub fn strip_html(html: &str) -> String {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let text = re(&TAG, r"(?s)<[^>]*>").replace_all(html, "");
    text.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// An image found in a cell's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputImage {
    pub mime: String,
    pub base64: String,
}

/// A cell's output as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CleanedOutput {
    pub text: String,
    /// Characters this project's cap removed (the kernel's own caps are noted in the
    /// text by the kernel).
    pub chars_cut: usize,
    pub images: Vec<OutputImage>,
}

fn cut_error(text: String) -> String {
    match text.char_indices().nth(ERROR_TEXT_LIMIT) {
        Some((pos, _)) => format!("{}\n... (truncated)", &text[..pos]),
        None => text,
    }
}

/// Clean a cell's items the reference's way, then cap the text at `cap` characters.
pub fn clean_output(items: &[OutputItem], truncation: &Truncation, cap: usize) -> CleanedOutput {
    let mut parts: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for item in items {
        match item {
            OutputItem::Stream { name, text } => {
                parts.push(format!("[{}] {}", name.as_str(), strip_ansi(text)));
            }
            OutputItem::Result { data } | OutputItem::DisplayData { data } => {
                for (mime, value) in data {
                    if mime.starts_with("image/") && mime != "image/svg+xml" {
                        images.push(OutputImage {
                            mime: mime.clone(),
                            base64: value.clone(),
                        });
                    }
                }
                let text = match (data.get("text/plain"), data.get("text/html")) {
                    (Some(plain), _) => strip_ansi(plain),
                    (None, Some(html)) => strip_html(html),
                    (None, None) => continue,
                };
                parts.push(text);
            }
            OutputItem::Error {
                name,
                value,
                traceback,
            } => {
                let text = strip_ansi(&format!("{name}: {value}\n{}", traceback.join("\n")));
                parts.push(cut_error(text));
            }
        }
    }
    if truncation.images_dropped > 0 {
        parts.push(format!(
            "[dsbox: {} more figure(s) were dropped by the output cap]",
            truncation.images_dropped
        ));
    }
    let (text, chars_cut) = cap_text(&parts.join("\n"), cap);
    CleanedOutput {
        text,
        chars_cut,
        images,
    }
}

/// Keep the first three quarters and the last quarter of `cap` characters, with a note
/// of how many were cut between them.
pub fn cap_text(text: &str, cap: usize) -> (String, usize) {
    let total = text.chars().count();
    if total <= cap {
        return (text.to_owned(), 0);
    }
    let head_chars = cap - cap / 4;
    let tail_chars = cap / 4;
    let cut = total - head_chars - tail_chars;
    let head_end = text
        .char_indices()
        .nth(head_chars)
        .map_or(text.len(), |(i, _)| i);
    let tail_start = text
        .char_indices()
        .nth(total - tail_chars)
        .map_or(text.len(), |(i, _)| i);
    (
        format!(
            "{}\n[dsbox: {cut} characters of output were cut here]\n{}",
            &text[..head_end],
            &text[tail_start..]
        ),
        cut,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dsbox_kernel::StreamName;

    use super::*;

    #[test]
    fn truncation_after_first_closing_tag() {
        assert_eq!(
            truncate_action("a <python>x</python> more <python>y</python>"),
            "a <python>x</python>"
        );
        // </python> wins over an earlier </answer>: the reference looks for it first.
        assert_eq!(
            truncate_action("<answer>1</answer> <python>x</python> tail"),
            "<answer>1</answer> <python>x</python>"
        );
        assert_eq!(
            truncate_action("<answer>1</answer> junk"),
            "<answer>1</answer>"
        );
        assert_eq!(truncate_action("no tags"), "no tags");
    }

    #[test]
    fn answer_and_code_extraction() {
        let a = parse_action("<reasoning>r</reasoning><answer>  0.20 \n</answer>");
        assert_eq!(a.answer.as_deref(), Some("0.20"));
        assert_eq!(a.code, None);
        let a = parse_action("<python>\nimport pandas as pd\nprint(1)\n</python>ignored");
        assert_eq!(a.code.as_deref(), Some("import pandas as pd\nprint(1)"));
        assert_eq!(a.text, "<python>\nimport pandas as pd\nprint(1)\n</python>");
        let a = parse_action("<python>```python\nx = 1\nprint(x)\n```</python>");
        assert_eq!(a.code.as_deref(), Some("x = 1\nprint(x)"));
        // Indented code inside the tags still runs.
        let a = parse_action("<python>\n    if True:\n        print(1)\n</python>");
        assert_eq!(a.code.as_deref(), Some("if True:\n    print(1)"));
        // Malformed tags: no code, no answer.
        let a = parse_action("<python>print(1)</pyhton> <answer>5");
        assert_eq!((a.code, a.answer), (None, None));
        // First answer wins.
        assert_eq!(
            extract_answer("<answer>a</answer><answer>b</answer>").as_deref(),
            Some("a")
        );
    }

    fn bundle(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cleaning_follows_the_reference() {
        let items = vec![
            OutputItem::Stream {
                name: StreamName::Stdout,
                text: "hello\n".into(),
            },
            OutputItem::Result {
                data: bundle(&[("text/plain", "42")]),
            },
            OutputItem::DisplayData {
                data: bundle(&[("text/html", "<table><tr><td>a&amp;b</td></tr></table>")]),
            },
            OutputItem::DisplayData {
                data: bundle(&[("image/png", "iVBOR"), ("text/plain", "<Figure>")]),
            },
            OutputItem::Error {
                name: "ValueError".into(),
                value: "bad".into(),
                traceback: vec!["\x1b[31mTraceback\x1b[0m".into(), "line".into()],
            },
        ];
        let c = clean_output(&items, &Truncation::default(), 10_000);
        assert_eq!(
            c.text,
            "[stdout] hello\n\n42\na&b\n<Figure>\nValueError: bad\nTraceback\nline"
        );
        assert_eq!(c.images.len(), 1);
        assert_eq!(c.images[0].mime, "image/png");
        assert_eq!(c.chars_cut, 0);
    }

    #[test]
    fn errors_are_cut_at_800_characters() {
        let items = vec![OutputItem::Error {
            name: "E".into(),
            value: "v".into(),
            traceback: vec!["x".repeat(2000)],
        }];
        let c = clean_output(&items, &Truncation::default(), 100_000);
        assert!(c.text.ends_with("\n... (truncated)"));
        assert_eq!(
            c.text.trim_end_matches("\n... (truncated)").chars().count(),
            800
        );
    }

    #[test]
    fn long_output_is_capped_with_a_note() {
        let text: String = (0..5000).map(|i| format!("{i}\n")).collect();
        let items = vec![OutputItem::Stream {
            name: StreamName::Stdout,
            text,
        }];
        let c = clean_output(&items, &Truncation::default(), 1000);
        assert!(c.chars_cut > 0);
        assert!(c.text.contains(&format!(
            "[dsbox: {} characters of output were cut here]",
            c.chars_cut
        )));
        assert!(c.text.starts_with("[stdout] 0\n1\n"));
        assert!(c.text.ends_with("4999\n"));
        assert!(c.text.chars().count() < 1100);
    }

    #[test]
    fn observation_wrapping() {
        assert_eq!(information("x"), "\n<information>x</information>\n");
        assert_eq!(
            execution_error("boom"),
            "\n<information>Code execution error: boom</information>\n"
        );
    }
}
