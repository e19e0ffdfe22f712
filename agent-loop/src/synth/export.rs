//! Stage 4: the kept trajectories as SFT data, with a dataset card.
//!
//! Every conversation is written in the tag protocol the model is trained on: the system
//! prompt, the task prompt as the first user turn, the model's replies as assistant turns
//! (`<python>…</python>` or `<answer>…</answer>`), and each observation as a user turn
//! wrapped in `<information>…</information>`. Tool-calling trajectories are rewritten to
//! that form (a `python` call becomes a `<python>` block, its result an `<information>`
//! user turn, an `answer` call an `<answer>` block), and consecutive user turns are
//! merged, so every exported conversation alternates user/assistant after an optional
//! system turn and ends with the assistant's answer. Figures are not exported (text only;
//! the card says how many were left out).
//!
//! Formats: `openai-chat` — `{"messages": [{"role", "content"}…]}` per line (OpenAI
//! fine-tuning, TRL, Axolotl's `chat_template`); `sharegpt` — `{"conversations":
//! [{"from": "system"|"human"|"gpt", "value"}…]}` (LLaMA-Factory, Axolotl's `sharegpt`).
//!
//! The card (`<stem>.card.md` and `<stem>.card.json` beside the data file): counts, the
//! seed suites and seeds, the models (generator, rollouts, judge), prompt versions, the
//! filters applied with their parameters and how many each dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::filter::{self, FilterSummary, KEPT, KeptLine, SUMMARY};
use super::stage::StageManifest;
use super::trajectories::run_suite;
use super::{Result, SynthError, write_json};
use crate::episode::Trajectory;
use crate::model::Role;
use crate::protocol;
use crate::scaffold::TOOLS_NOTE;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    OpenaiChat,
    Sharegpt,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::OpenaiChat => "openai-chat",
            ExportFormat::Sharegpt => "sharegpt",
        }
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "openai-chat" | "openai" | "chat" => Ok(ExportFormat::OpenaiChat),
            "sharegpt" => Ok(ExportFormat::Sharegpt),
            other => Err(format!(
                "unknown format `{other}`: use openai-chat or sharegpt"
            )),
        }
    }
}

/// Export settings.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// Keep the system prompt as the first turn.
    pub system: bool,
    /// Add a `metadata` object per line (task id, seed, trajectory, judge score).
    pub metadata: bool,
}

/// One turn of an exported conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

fn argument(arguments: &str, key: &str) -> Option<String> {
    let v: Value = serde_json::from_str(arguments).ok()?;
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn push(turns: &mut Vec<Turn>, role: Role, content: String) {
    if let Some(last) = turns.last_mut()
        && last.role == role
        && role == Role::User
    {
        last.content.push('\n');
        last.content.push_str(&content);
        return;
    }
    turns.push(Turn { role, content });
}

/// A trajectory's conversation in the tag protocol (see the module doc). Figures are
/// dropped; returns the turns and how many figures were left out.
pub fn chat_turns(t: &Trajectory, system: bool) -> (Vec<Turn>, usize) {
    let mut turns = Vec::new();
    let mut figures = 0;
    for m in &t.conversation {
        figures += m.images.len();
        match m.role {
            Role::System => {
                if system {
                    let content = m.content.strip_suffix(TOOLS_NOTE).unwrap_or(&m.content);
                    turns.push(Turn {
                        role: Role::System,
                        content: content.to_owned(),
                    });
                }
            }
            Role::User => push(&mut turns, Role::User, m.content.clone()),
            Role::Tool => push(&mut turns, Role::User, protocol::information(&m.content)),
            Role::Assistant if m.tool_calls.is_empty() => {
                push(&mut turns, Role::Assistant, m.content.clone());
            }
            Role::Assistant => {
                let mut text = m.content.trim().to_owned();
                for c in &m.tool_calls {
                    let block = match c.name.as_str() {
                        "python" => argument(&c.arguments, "code")
                            .map(|code| format!("<python>\n{code}\n</python>")),
                        "answer" => argument(&c.arguments, "answer")
                            .map(|a| format!("<answer>{a}</answer>")),
                        _ => None,
                    };
                    if let Some(b) = block {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&b);
                    }
                }
                push(&mut turns, Role::Assistant, text);
            }
        }
    }
    (turns, figures)
}

/// Check an exported conversation: an optional system turn first, then user and
/// assistant alternating from a user turn, ending with an assistant turn, no empty
/// content.
pub fn validate(turns: &[Turn]) -> std::result::Result<(), String> {
    let body = match turns.first() {
        Some(t) if t.role == Role::System => &turns[1..],
        _ => turns,
    };
    if body.is_empty() {
        return Err("no user or assistant turns".into());
    }
    for (i, t) in turns.iter().enumerate() {
        if t.content.trim().is_empty() {
            return Err(format!("turn {} ({:?}) is empty", i + 1, t.role));
        }
    }
    for (i, t) in body.iter().enumerate() {
        let want = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if t.role != want {
            return Err(format!(
                "turn {} is {:?} where {want:?} was expected",
                i + 1,
                t.role
            ));
        }
    }
    if body.last().map(|t| t.role) != Some(Role::Assistant) {
        return Err("the conversation does not end with an assistant turn".into());
    }
    Ok(())
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// One output line.
pub fn line(turns: &[Turn], format: ExportFormat, metadata: Option<Value>) -> Value {
    let mut v = match format {
        ExportFormat::OpenaiChat => json!({
            "messages": turns.iter().map(|t| json!({"role": role_str(t.role), "content": t.content})).collect::<Vec<_>>()
        }),
        ExportFormat::Sharegpt => json!({
            "conversations": turns.iter().map(|t| {
                let from = match t.role { Role::System => "system", Role::User | Role::Tool => "human", Role::Assistant => "gpt" };
                json!({"from": from, "value": t.content})
            }).collect::<Vec<_>>()
        }),
    };
    if let (Some(m), Some(obj)) = (metadata, v.as_object_mut()) {
        obj.insert("metadata".into(), m);
    }
    v
}

/// The dataset card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetCard {
    pub name: String,
    pub created: String,
    pub dsbox_version: String,
    pub format: ExportFormat,
    pub file: PathBuf,
    pub counts: CardCounts,
    pub sources: CardSources,
    pub filters: FilterSummary,
    /// Trajectories left out at export, with why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardCounts {
    pub examples: usize,
    pub queries: usize,
    pub trajectories_generated: usize,
    pub trajectories_kept: usize,
    pub seeds: usize,
    pub mean_turns: f64,
    pub mean_messages: f64,
    pub figures_left_out: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardSources {
    /// Seed suite → number of seed tasks used.
    pub seed_suites: BTreeMap<String, usize>,
    pub generator_models: Vec<String>,
    pub query_prompt_versions: Vec<String>,
    pub rollout_model: String,
    pub rollouts_per_query: u32,
    pub temperature: Option<f64>,
    pub scaffold: String,
    pub rootfs: String,
    pub trajectories_run: PathBuf,
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub data: PathBuf,
    pub card_md: PathBuf,
    pub card_json: PathBuf,
    pub card: DatasetCard,
}

/// `train.jsonl` → `train.card.md`, `train.card.json`.
pub fn card_paths(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let dir = out.parent().unwrap_or(Path::new("."));
    (
        dir.join(format!("{stem}.card.md")),
        dir.join(format!("{stem}.card.json")),
    )
}

/// Export the trajectories `filter_dir` kept (default `RUN/filter`) from the trajectories
/// run `run` into `out`, with the card beside it.
pub fn export(
    run: &Path,
    filter_dir: Option<&Path>,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let stage = StageManifest::read(run, "trajectories")?.trajectories(run)?;
    let filter_dir = filter_dir.map_or_else(|| run.join(filter::FILTER_DIR), Path::to_owned);
    let kept_path = filter_dir.join(KEPT);
    if !kept_path.is_file() {
        return Err(SynthError::NotFiltered {
            dir: filter_dir,
            run: run.to_owned(),
        });
    }
    let kept: Vec<KeptLine> = filter::read_jsonl(&kept_path)?;
    let summary: FilterSummary = super::read_json(&filter_dir.join(SUMMARY))?;
    let (manifest, records) = crate::rundir::read_run(run)?;
    let suite = run_suite(run, &stage.name)?;
    let decisions: Vec<filter::Decision> =
        filter::read_jsonl(&filter_dir.join(filter::DECISIONS)).unwrap_or_default();

    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    let mut turns_total = 0usize;
    let mut messages_total = 0usize;
    let mut figures = 0usize;
    let mut queries = BTreeSet::new();
    for k in &kept {
        let path = run.join(&k.trajectory_file);
        let t: Trajectory = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                skipped.push(format!(
                    "{}#{}: cannot read {}: {e}",
                    k.task_id,
                    k.trajectory,
                    path.display()
                ));
                continue;
            }
        };
        let (turns, figs) = chat_turns(&t, opts.system);
        if let Err(e) = validate(&turns) {
            skipped.push(format!("{}#{}: {e}", k.task_id, k.trajectory));
            continue;
        }
        figures += figs;
        turns_total += t.turns as usize;
        messages_total += turns.len();
        queries.insert(k.task_id.clone());
        let meta = opts.metadata.then(|| {
            let task = suite.task(&k.task_id);
            let d = decisions.iter().find(|d| d.task_id == k.task_id && d.trajectory == k.trajectory);
            json!({
                "task_id": k.task_id,
                "trajectory": k.trajectory,
                "seed_id": task.and_then(|t| t.metadata.get("synth")).and_then(|s| s.get("seed_id")),
                "answer": t.prediction,
                "reference_answer": t.ground_truth,
                "judge_total": d.and_then(|d| d.judge.as_ref()).map(|j| j.total),
                "turns": t.turns,
            })
        });
        lines.push(line(&turns, opts.format, meta));
    }
    if lines.is_empty() {
        return Err(SynthError::Invalid {
            what: format!("export of {}", run.display()),
            detail: format!(
                "none of the {} kept trajectories could be exported ({}); run `dsbox synth filter` again",
                kept.len(),
                skipped.join("; ")
            ),
        });
    }
    let mut bytes = Vec::new();
    for l in &lines {
        serde_json::to_writer(&mut bytes, l).map_err(|e| SynthError::Io {
            path: out.to_owned(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
    }

    // Sources: the seeds and generators the tasks' provenance names.
    let mut seed_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut generators = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for t in &suite.tasks {
        let Some(s) = t.metadata.get("synth") else {
            continue;
        };
        if let (Some(suite_name), Some(id)) = (
            s.get("seed_suite").and_then(Value::as_str),
            s.get("seed_id").and_then(Value::as_str),
        ) {
            seed_ids
                .entry(suite_name.to_owned())
                .or_default()
                .insert(id.to_owned());
        }
        if let Some(m) = s.get("model").and_then(Value::as_str) {
            generators.insert(m.to_owned());
        }
        if let Some(v) = s.get("prompt_version").and_then(Value::as_str) {
            versions.insert(v.to_owned());
        }
    }
    let n = lines.len() as f64;
    let card = DatasetCard {
        name: out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        created: crate::rundir::now_rfc3339(),
        dsbox_version: env!("CARGO_PKG_VERSION").into(),
        format: opts.format,
        file: out.to_owned(),
        counts: CardCounts {
            examples: lines.len(),
            queries: queries.len(),
            trajectories_generated: records.len(),
            trajectories_kept: kept.len(),
            seeds: seed_ids.values().map(BTreeSet::len).sum(),
            mean_turns: (turns_total as f64 / n * 100.0).round() / 100.0,
            mean_messages: (messages_total as f64 / n * 100.0).round() / 100.0,
            figures_left_out: figures,
        },
        sources: CardSources {
            seed_suites: seed_ids.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
            generator_models: generators.into_iter().collect(),
            query_prompt_versions: versions.into_iter().collect(),
            rollout_model: manifest.model.name.clone(),
            rollouts_per_query: manifest.k,
            temperature: manifest.model.temperature,
            scaffold: manifest.scaffold.as_str().into(),
            rootfs: format!(
                "{} ({})",
                manifest.backend.rootfs, manifest.backend.rootfs_hash
            ),
            trajectories_run: std::path::absolute(run).unwrap_or_else(|_| run.to_owned()),
        },
        filters: summary,
        skipped,
    };
    let (card_md, card_json) = card_paths(out);
    crate::rundir::write_atomic(out, &bytes)?;
    write_json(&card_json, &card)?;
    crate::rundir::write_atomic(&card_md, card_markdown(&card).as_bytes())?;
    Ok(ExportReport {
        data: out.to_owned(),
        card_md,
        card_json,
        card,
    })
}

/// The card as Markdown.
pub fn card_markdown(c: &DatasetCard) -> String {
    let p = &c.filters.params;
    let on = |b: bool| if b { "on" } else { "off" };
    let mut s = format!(
        "# Dataset card: {}\n\nSFT data generated by dsbox {} on {}: synthetic data-analysis queries, agent trajectories that solved them in sandboxes, filtered with execution verification.\n\n",
        c.name, c.dsbox_version, c.created
    );
    s.push_str(&format!(
        "## Contents\n\n| | |\n|---|---|\n| file | `{}` |\n| format | {} |\n| examples (conversations) | {} |\n| distinct queries | {} |\n| seeds | {} |\n| trajectories generated / kept | {} / {} |\n| mean turns per example | {} |\n| mean messages per example | {} |\n| figures left out (text only) | {} |\n\n",
        c.file.display(),
        c.format.as_str(),
        c.counts.examples,
        c.counts.queries,
        c.counts.seeds,
        c.counts.trajectories_generated,
        c.counts.trajectories_kept,
        c.counts.mean_turns,
        c.counts.mean_messages,
        c.counts.figures_left_out,
    ));
    let seeds: Vec<String> = c
        .sources
        .seed_suites
        .iter()
        .map(|(k, v)| format!("{k} ({v} seeds)"))
        .collect();
    s.push_str(&format!(
        "## Sources\n\n- seed suites: {}\n- query generator: {} (prompt {})\n- rollouts: {}, {} per query, temperature {}, scaffold {}\n- sandboxes: rootfs {}\n- trajectories run: `{}`\n\n",
        if seeds.is_empty() { "(not recorded)".into() } else { seeds.join(", ") },
        if c.sources.generator_models.is_empty() { "(not recorded)".into() } else { c.sources.generator_models.join(", ") },
        c.sources.query_prompt_versions.join(", "),
        c.sources.rollout_model,
        c.sources.rollouts_per_query,
        c.sources.temperature.map_or("(server default)".into(), |t| t.to_string()),
        c.sources.scaffold,
        c.sources.rootfs,
        c.sources.trajectories_run.display(),
    ));
    s.push_str(&format!(
        "## Filters applied\n\n| filter | setting |\n|---|---|\n| turn range | {}..={} |\n| answer agreement (majority share) | {} |\n| must match the generated answer | {} |\n| execution verification | {} |\n| LLM judge (exec 0.4, quality 0.3, alignment 0.2, technical 0.1) | {} |\n| near-duplicate queries (token Jaccard) | {} |\n| near-duplicates of seed questions | {} |\n| trajectories per query | {} |\n\n",
        p.min_turns,
        p.max_turns,
        if p.agreement > 0.0 { format!(">= {}", p.agreement) } else { "off".into() },
        on(p.require_correct),
        on(p.verify),
        p.judge.as_ref().map_or("off".into(), |j| format!("{} >= {} ({})", j.model, j.threshold, j.rubric)),
        p.dedup_threshold.map_or("off".into(), |t| format!(">= {t}")),
        on(p.seed_dedup && p.dedup_threshold.is_some()),
        p.per_query.map_or("all".into(), |n| n.to_string()),
    ));
    s.push_str("| decision | trajectories |\n|---|---|\n");
    for (r, n) in &c.filters.by_reason {
        s.push_str(&format!("| {} | {n} |\n", r.as_str()));
    }
    if !c.skipped.is_empty() {
        s.push_str("\n## Left out at export\n\n");
        for x in &c.skipped {
            s.push_str(&format!("- {x}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{EndReason, EpisodeTimings};
    use crate::model::{Message, ToolCall, Usage};

    fn trajectory(conversation: Vec<Message>) -> Trajectory {
        Trajectory {
            prediction: Some("5".into()),
            ground_truth: None,
            query: "q".into(),
            turns: 2,
            conversation,
            extra_info: Value::Null,
            task_id: "s/a".into(),
            suite: "s".into(),
            index: 0,
            trajectory: 0,
            model: "m".into(),
            scaffold: "tools".into(),
            end_reason: EndReason::Answered,
            error: None,
            error_kind: None,
            tokens: Usage::default(),
            timings: EpisodeTimings::default(),
            cells: vec![],
            images: vec![],
            submission: None,
            metrics: Default::default(),
            score: None,
        }
    }

    #[test]
    fn tool_calls_become_tags_and_turns_alternate() {
        let mut call = Message::assistant("");
        call.tool_calls = vec![
            ToolCall {
                id: "a".into(),
                name: "python".into(),
                arguments: r#"{"code": "x = 5"}"#.into(),
            },
            ToolCall {
                id: "b".into(),
                name: "python".into(),
                arguments: r#"{"code": "print(x)"}"#.into(),
            },
        ];
        let mut done = Message::assistant("");
        done.tool_calls = vec![ToolCall {
            id: "c".into(),
            name: "answer".into(),
            arguments: r#"{"answer": 5}"#.into(),
        }];
        let t = trajectory(vec![
            Message::system(format!("sys{TOOLS_NOTE}")),
            Message::user("question"),
            call,
            Message::tool("a", ""),
            Message::tool("b", "[stdout] 5"),
            done,
        ]);
        let (turns, _) = chat_turns(&t, true);
        validate(&turns).unwrap();
        assert_eq!(turns[0].content, "sys");
        assert_eq!(
            turns[2].content,
            "<python>\nx = 5\n</python>\n<python>\nprint(x)\n</python>"
        );
        // Two tool results: one user turn.
        assert_eq!(
            turns[3].content,
            "\n<information></information>\n\n\n<information>[stdout] 5</information>\n"
        );
        assert_eq!(turns[4].content, "<answer>5</answer>");
        let (turns, _) = chat_turns(&t, false);
        assert_eq!(turns[0].role, Role::User);
        validate(&turns).unwrap();
        let v = line(&turns, ExportFormat::Sharegpt, None);
        assert_eq!(v["conversations"][0]["from"], "human");
        assert_eq!(v["conversations"][1]["from"], "gpt");
        let v = line(&turns, ExportFormat::OpenaiChat, Some(json!({"id": 1})));
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(v["metadata"]["id"], 1);
    }

    #[test]
    fn invalid_conversations_are_named() {
        let t = |r: Role, c: &str| Turn {
            role: r,
            content: c.into(),
        };
        assert!(
            validate(&[t(Role::System, "s")])
                .unwrap_err()
                .contains("no user")
        );
        assert!(
            validate(&[t(Role::User, "q"), t(Role::User, "q")])
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            validate(&[t(Role::User, "q")])
                .unwrap_err()
                .contains("does not end")
        );
        assert!(
            validate(&[t(Role::User, "q"), t(Role::Assistant, " ")])
                .unwrap_err()
                .contains("empty")
        );
        assert!(validate(&[t(Role::User, "q"), t(Role::Assistant, "a")]).is_ok());
    }

    #[test]
    fn card_files_sit_beside_the_data() {
        let (md, js) = card_paths(Path::new("/tmp/out/train.jsonl"));
        assert_eq!(md, Path::new("/tmp/out/train.card.md"));
        assert_eq!(js, Path::new("/tmp/out/train.card.json"));
    }
}
