//! Stage 1: query generation. An agent explores each seed task's data in a sandbox (the
//! seed's own files, read-only, exactly as an eval episode would see them) and proposes
//! `n` new questions with answers it computed. The episodes run through
//! [`crate::run::run_eval`] (k = 1), so the run directory is an eval run: resumable,
//! with trajectories and `dsbox report`.
//!
//! The proposals ([`super::parse`]) become task records of the tasks crate with their
//! provenance in `metadata.synth` (seed id and question, model, prompt version, time, the
//! generation trajectory) and the seed's data files (host paths included, so the file
//! stands alone). They are written as a user suite: `queries.jsonl` (one record per
//! line, the `dsbox` task format) and `queries.toml` (its entry: `dsbox eval --suites-dir
//! RUN_DIR --suite NAME` runs it), plus `queries-report.json` (per seed: what was
//! proposed, accepted and rejected, and why). All three are rebuilt from the run's
//! trajectories after every (resumed) run and replaced atomically.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dsbox_tasks::metric::text::{parse_at_pairs, parse_truth_pairs};
use dsbox_tasks::pyliteral::PyValue;
use dsbox_tasks::{Metric, MetricSpec, RenderedPrompt, Task, Track};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::parse::{Proposal, parse_proposals};
use super::stage::QueriesStage;
use super::{Result, SynthError, io, write_json};
use crate::episode::{EndReason, Trajectory};
use crate::model::Role;
use crate::protocol::STOP_SEQUENCES;
use crate::record::ResultRecord;
use crate::run::PlannedItem;

/// Names the generation prompt; recorded with every generated task.
pub const PROMPT_VERSION: &str = "synth-queries/v1";
pub const QUERIES_FILE: &str = "queries.jsonl";
pub const ENTRY_FILE: &str = "queries.toml";
pub const REPORT_FILE: &str = "queries-report.json";

/// The generator's system prompt. Its first sentence identifies the role (the scripted
/// analyst keys on it).
pub const GENERATOR_SYSTEM: &str = "You are an expert data scientist who writes new benchmark questions about datasets. You explore the data by writing Python code and running it in a live Jupyter-style kernel, one step at a time, and you compute the answer to every question you write.

How to work:
- The kernel keeps its state between steps: variables, imports and loaded data stay available. Load each file once and reuse it.
- Each reply does exactly one of two things:
  * run code: put one block of Python in <python>...</python>. You will see its output before your next step.
  * finish: put your list of questions and answers in <answer>...</answer>.
- Do every calculation in Python, never in your head, and print the numbers you rely on.";

/// Sandbox paths of a seed's data whose host file exists, and those that do not.
pub fn seed_data(seed: &Task) -> (Vec<&str>, Vec<&str>) {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for d in &seed.data {
        match &d.host {
            Some(h) if h.exists() => present.push(d.path.as_str()),
            _ => missing.push(d.path.as_str()),
        }
    }
    (present, missing)
}

/// Seeds must be analysis tasks with data on this host. Returns the seeds to use; with
/// `skip_without_data` (a whole suite was selected) seeds without data are dropped with a
/// note instead of failing.
pub fn check_seeds(seeds: Vec<Task>, skip_without_data: bool) -> Result<(Vec<Task>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut without = Vec::new();
    let mut detail = String::new();
    let mut kept = Vec::new();
    for s in seeds {
        if s.track == Track::Prediction {
            return Err(SynthError::PredictionSeed { id: s.id });
        }
        let (present, missing) = seed_data(&s);
        if present.is_empty() {
            if detail.is_empty() {
                detail = match (s.data.first(), missing.first()) {
                    (None, _) => format!("{} names no data files", s.id),
                    (Some(d), Some(p)) => format!(
                        "{} names {p}, expected at {}",
                        s.id,
                        d.host
                            .as_deref()
                            .map_or_else(|| "(no host path)".into(), |h| h.display().to_string())
                    ),
                    (Some(_), None) => format!("{}: its files are missing", s.id),
                };
            }
            without.push(s.id);
            continue;
        }
        if !missing.is_empty() {
            notes.push(format!(
                "seed {}: {} of its files are missing on this host and not mounted ({})",
                s.id,
                missing.len(),
                missing.join(", ")
            ));
        }
        kept.push(s);
    }
    if !without.is_empty() {
        if !skip_without_data || kept.is_empty() {
            return Err(SynthError::SeedsWithoutData {
                seeds: without,
                detail,
            });
        }
        notes.push(format!(
            "skipped {} seed(s) without data on this host: {}",
            without.len(),
            without.join(", ")
        ));
    }
    if kept.is_empty() {
        return Err(SynthError::NoSeeds {
            detail: "check --seeds (SUITE or SUITE:ID,ID)".into(),
        });
    }
    Ok((kept, notes))
}

/// The exploration episode's task: the seed's data, no answer, no metric.
pub fn generation_task(seed: &Task, n: usize) -> Task {
    Task {
        id: seed.id.clone(),
        suite: seed.suite.clone(),
        track: Track::Analysis,
        question: format!(
            "Propose {n} new questions (with answers) about the data of {}",
            seed.id
        ),
        context: seed.context.clone(),
        data: seed.data.clone(),
        submission: None,
        answer: None,
        answer_guideline: None,
        metric: MetricSpec::new("none"),
        metadata: Map::new(),
    }
}

/// The generation prompt for one seed (the eval prompt's section structure).
pub fn generation_prompt(seed: &Task, n: usize) -> RenderedPrompt {
    let mut user = format!(
        "TASK:\nExplore the dataset below with code, then write {n} new data-analysis questions about it, each with the correct answer computed from the data by your code.\n\nEXAMPLE QUESTION (from an existing benchmark on this data; do not repeat it):\n{}\n",
        seed.question.trim()
    );
    if let Some(g) = &seed.answer_guideline {
        user.push_str(&format!("Its answer format: {}\n", g.trim()));
    }
    if !seed.context.trim().is_empty() {
        user.push_str(&format!(
            "\nDATASET INFORMATION:\n{}\n",
            seed.context.trim()
        ));
    }
    user.push_str("\nDATASET LOCATIONS:\n");
    let (present, _) = seed_data(seed);
    for p in present {
        user.push_str(&format!("- {p}\n"));
    }
    user.push_str(&format!(
        "\nINSTRUCTIONS:
- Look at the data first (columns, types, sizes, missing values), then compute every answer with code. Never guess an answer.
- Each question must be answerable from these files alone, have exactly one correct answer, and differ from the example and from each other (other columns, statistics or methods).
- Say in each question how the answer must be written (e.g. \"round to 2 decimals\", \"give the letter of the option\", \"give @mean[value] @std[value]\").
- Write each answer exactly as your code printed it, rounded as the question says.
- The files are read-only; open them by their full paths.
- When you are done, reply with the {n} items inside <answer></answer>, in exactly this form:
<answer>
1. Query: <the question>
   Answer: <the answer>
   Format: <how the answer is written>
2. Query: ...
   Answer: ...
   Format: ...
</answer>
"
    ));
    RenderedPrompt {
        system: GENERATOR_SYSTEM.to_owned(),
        user,
    }
}

/// The planned exploration episodes, one per seed, in order.
pub fn plan(seeds: &[Task], n: usize) -> Vec<PlannedItem> {
    let mut per_suite: std::collections::HashMap<&str, usize> = Default::default();
    seeds
        .iter()
        .map(|s| {
            let index = per_suite.entry(s.suite.as_str()).or_insert(0);
            let item = PlannedItem {
                task: Arc::new(generation_task(s, n)),
                prompt: Arc::new(generation_prompt(s, n)),
                index: *index,
            };
            *index += 1;
            item
        })
        .collect()
}

/// Stop sequences of the generator: the react scaffold's (`</python>`, `</answer>`).
pub fn stop_sequences() -> Vec<String> {
    STOP_SEQUENCES.iter().map(|s| s.to_string()).collect()
}

/// An item that did not become a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// 1-based position in the reply.
    pub item: usize,
    pub query: String,
    pub reason: String,
}

/// Where a generated task came from.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// Suite name of the generated tasks.
    pub name: &'a str,
    pub model: &'a str,
    pub generated_at: &'a str,
    /// The generation trajectory, relative to the queries run.
    pub trajectory_file: &'a str,
    /// The queries run directory.
    pub run: &'a Path,
}

fn normalise(q: &str) -> String {
    q.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Local ids use letters, digits, `-` and `_` only.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `exact_match`, `list_match(tolerance=0.01)`, … → a spec the tasks crate accepts.
fn metric_hint(hint: &str) -> Option<MetricSpec> {
    let hint = hint.trim().trim_matches('`').trim();
    let (name, params) = match hint.split_once('(') {
        Some((n, rest)) => (n.trim(), rest.trim_end().strip_suffix(')')?),
        None => (hint, ""),
    };
    let name = name.to_ascii_lowercase().replace([' ', '-'], "_");
    if !["exact_match", "list_match", "fuzzy_exact_match", "dabstep"].contains(&name.as_str()) {
        return None;
    }
    let mut spec = MetricSpec::new(&name);
    for kv in params.split(',').filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv.split_once('=')?;
        let v: f64 = v.trim().parse().ok()?;
        spec = spec.with(k.trim(), v);
    }
    Metric::from_spec(&spec).ok().map(|_| spec)
}

/// Python's repr of a list of `[name, value]` pairs (DAEval's ground-truth form).
pub(crate) fn pairs_literal(pairs: &[(String, String)]) -> String {
    PyValue::List(
        pairs
            .iter()
            .map(|(n, v)| PyValue::List(vec![PyValue::Str(n.clone()), PyValue::Str(v.clone())]))
            .collect(),
    )
    .repr()
}

/// The metric, ground truth and answer guideline of one proposal:
/// 1. a valid `Metric:` hint wins;
/// 2. `@name[value]` pairs in the answer → `list_match` (the seed's tolerance when it is
///    list_match, else 0), ground truth as the literal list of pairs;
/// 3. the seed's metric when it compares texts or numbers (exact_match, fuzzy, dabstep,
///    LLM-judged);
/// 4. else `exact_match` with tolerance 0.01.
fn metric_for(
    seed: &Task,
    p: &Proposal,
    answer: &str,
) -> std::result::Result<(MetricSpec, String, Option<String>), String> {
    let pairs = parse_at_pairs(answer);
    let seed_metric = Metric::for_task(seed).ok();
    let spec = match p.metric.as_deref().and_then(metric_hint) {
        Some(spec) => spec,
        None if !pairs.is_empty() => match seed_metric {
            Some(Metric::ListMatch { .. }) => seed.metric.clone(),
            _ => MetricSpec::new("list_match").with("tolerance", 0.0),
        },
        None => match seed_metric {
            Some(
                Metric::ExactMatch { .. }
                | Metric::FuzzyExactMatch { .. }
                | Metric::Dabstep
                | Metric::LlmScore
                | Metric::EquivalenceByLlm { .. },
            ) => seed.metric.clone(),
            _ => MetricSpec::new("exact_match").with("tolerance", 0.01),
        },
    };
    let mut guideline = p.format.clone();
    let truth = if spec.name == "list_match" {
        if !pairs.is_empty() {
            if guideline.is_none() {
                guideline = Some(
                    pairs
                        .iter()
                        .map(|(n, _)| format!("@{n}[value]"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            pairs_literal(&pairs)
        } else if parse_truth_pairs(answer).is_ok() {
            answer.to_owned()
        } else {
            return Err("the metric is list_match but the answer has no @name[value] pairs".into());
        }
    } else {
        answer.to_owned()
    };
    Ok((spec, truth, guideline))
}

/// Turn one seed's proposals into tasks (at most `n`), with the reason for each item
/// left out.
pub fn tasks_from_proposals(
    seed: &Task,
    proposals: &[Proposal],
    n: usize,
    prov: &Provenance<'_>,
) -> (Vec<Task>, Vec<Rejected>) {
    let mut tasks = Vec::new();
    let mut rejected = Vec::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    let seed_q = normalise(&seed.question);
    let local = seed
        .id
        .strip_prefix(&format!("{}/", seed.suite))
        .unwrap_or(&seed.id);
    for (i, p) in proposals.iter().enumerate() {
        let item = i + 1;
        let reject = |reason: String| Rejected {
            item,
            query: p.query.clone(),
            reason,
        };
        let norm = normalise(&p.query);
        let Some(answer) = p.answer.as_deref().filter(|a| !a.trim().is_empty()) else {
            rejected.push(reject("no answer given".into()));
            continue;
        };
        if norm == seed_q {
            rejected.push(reject("repeats the seed question".into()));
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(q, _)| *q == norm) {
            rejected.push(reject(format!("repeats item {first}")));
            continue;
        }
        if tasks.len() >= n {
            rejected.push(reject(format!("more than the {n} items asked for")));
            continue;
        }
        let (metric, truth, guideline) = match metric_for(seed, p, answer) {
            Ok(x) => x,
            Err(reason) => {
                rejected.push(reject(reason));
                continue;
            }
        };
        seen.push((norm, item));
        let data = seed
            .data
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.host = d.host.map(|h| std::path::absolute(&h).unwrap_or(h));
                d
            })
            .collect();
        let mut synth = Map::new();
        synth.insert("seed_id".into(), json!(seed.id));
        synth.insert("seed_suite".into(), json!(seed.suite));
        synth.insert("seed_question".into(), json!(seed.question));
        synth.insert("model".into(), json!(prov.model));
        synth.insert("prompt_version".into(), json!(PROMPT_VERSION));
        synth.insert("generated_at".into(), json!(prov.generated_at));
        synth.insert("run".into(), json!(prov.run));
        synth.insert("trajectory_file".into(), json!(prov.trajectory_file));
        synth.insert("item".into(), json!(item));
        synth.insert("answer_as_written".into(), json!(answer));
        if let Some(f) = &p.format {
            synth.insert("answer_format".into(), json!(f));
        }
        if let Some(m) = &p.metric {
            synth.insert("metric_hint".into(), json!(m));
        }
        let mut metadata = Map::new();
        metadata.insert("synth".into(), Value::Object(synth));
        tasks.push(Task {
            id: format!(
                "{}/{}-{}-q{item}",
                prov.name,
                slug(&seed.suite),
                slug(local)
            ),
            suite: prov.name.to_owned(),
            track: Track::Analysis,
            question: p.query.clone(),
            context: seed.context.clone(),
            data,
            submission: None,
            answer: Some(Value::String(truth)),
            answer_guideline: guideline,
            metric,
            metadata,
        });
    }
    (tasks, rejected)
}

/// What happened for one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedReport {
    pub seed: String,
    /// The generation trajectory (relative to the run), when the episode finished.
    pub trajectory_file: Option<String>,
    pub end_reason: Option<EndReason>,
    pub proposed: usize,
    pub accepted: Vec<String>,
    pub rejected: Vec<Rejected>,
    /// Why nothing came from this seed, when nothing did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `queries-report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueriesReport {
    pub name: String,
    pub model: String,
    pub prompt_version: String,
    pub n: usize,
    pub seeds: usize,
    pub generated: usize,
    pub per_seed: Vec<SeedReport>,
}

/// The text to read proposals from: the answer, else the last assistant message.
fn reply_text(dir: &Path, record: &ResultRecord) -> Option<String> {
    if let Some(p) = &record.prediction {
        return Some(p.clone());
    }
    let bytes = std::fs::read(dir.join(&record.trajectory_file)).ok()?;
    let t: Trajectory = serde_json::from_slice(&bytes).ok()?;
    t.conversation
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .map(|m| m.content.clone())
}

/// Build the generated tasks and the report from the run's finished episodes. `seeds`
/// are the seed tasks in the stage's order; `model` the generator's name.
pub fn collect(
    dir: &Path,
    stage: &QueriesStage,
    seeds: &[Task],
    records: &[ResultRecord],
    model: &str,
) -> (Vec<Task>, QueriesReport) {
    let dir_abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut tasks = Vec::new();
    let mut per_seed = Vec::new();
    for seed in seeds {
        let Some(rec) = records.iter().find(|r| r.sample_id == seed.id) else {
            per_seed.push(SeedReport {
                seed: seed.id.clone(),
                trajectory_file: None,
                end_reason: None,
                proposed: 0,
                accepted: vec![],
                rejected: vec![],
                problem: Some(
                    "not generated yet (the run was interrupted): continue it with --resume".into(),
                ),
            });
            continue;
        };
        let mut report = SeedReport {
            seed: seed.id.clone(),
            trajectory_file: Some(rec.trajectory_file.clone()),
            end_reason: Some(rec.end_reason),
            proposed: 0,
            accepted: vec![],
            rejected: vec![],
            problem: None,
        };
        if rec.end_reason.is_error() {
            report.problem = Some(format!(
                "the generation episode failed ({}): {}; redo it with --resume DIR --retry-errors",
                rec.end_reason.as_str(),
                rec.error.clone().unwrap_or_default()
            ));
            per_seed.push(report);
            continue;
        }
        let text = reply_text(dir, rec).unwrap_or_default();
        let proposals = parse_proposals(&text);
        report.proposed = proposals.len();
        let prov = Provenance {
            name: &stage.name,
            model,
            generated_at: &rec.finished_at,
            trajectory_file: &rec.trajectory_file,
            run: &dir_abs,
        };
        let (new, rejected) = tasks_from_proposals(seed, &proposals, stage.n, &prov);
        report.accepted = new.iter().map(|t| t.id.clone()).collect();
        report.rejected = rejected;
        if proposals.is_empty() {
            let excerpt: String = text.trim().chars().take(160).collect();
            report.problem = Some(if rec.end_reason == EndReason::MaxTurns {
                format!(
                    "no answer within the turn limit and no `Query: … Answer: …` items in the last reply; raise --max-turns (last reply: {excerpt:?})"
                )
            } else {
                format!("the reply held no `Query: … Answer: …` items (it began: {excerpt:?})")
            });
        } else if new.is_empty() {
            report.problem = Some("every proposed item was rejected (see `rejected`)".into());
        }
        tasks.extend(new);
        per_seed.push(report);
    }
    // Ids stay unique even if two seeds share an id across suites' slugs.
    let mut ids = HashSet::new();
    tasks.retain(|t| ids.insert(t.id.clone()));
    let report = QueriesReport {
        name: stage.name.clone(),
        model: model.to_owned(),
        prompt_version: stage.prompt_version.clone(),
        n: stage.n,
        seeds: seeds.len(),
        generated: tasks.len(),
        per_seed,
    };
    (tasks, report)
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A user-suite entry for a dsbox-format tasks file.
pub(crate) fn entry_toml(
    name: &str,
    description: &str,
    file: &str,
    data_dir: Option<&Path>,
) -> String {
    let mut s = format!(
        "# Written by dsbox synth. Load it with --suites-dir pointing at this directory.\nname = {}\ndescription = {}\nformat = \"dsbox\"\nfiles = [{}]\ntrack = \"analysis\"\n",
        toml_str(name),
        toml_str(description),
        toml_str(file)
    );
    if let Some(d) = data_dir {
        s.push_str(&format!(
            "data_dir = {}\n",
            toml_str(&d.display().to_string())
        ));
    }
    s
}

/// The files of a queries run.
#[derive(Debug, Clone)]
pub struct QueriesOutput {
    pub queries: PathBuf,
    pub entry: PathBuf,
    pub report: PathBuf,
}

/// Write `queries-report.json`, then (when there is at least one task) `queries.jsonl`
/// and `queries.toml`, each atomically. With no task at all the report is written and
/// [`SynthError::NoQueries`] returned; no tasks file is left (a stale one is removed).
pub fn write_outputs(dir: &Path, tasks: &[Task], report: &QueriesReport) -> Result<QueriesOutput> {
    let out = QueriesOutput {
        queries: dir.join(QUERIES_FILE),
        entry: dir.join(ENTRY_FILE),
        report: dir.join(REPORT_FILE),
    };
    write_json(&out.report, report)?;
    if tasks.is_empty() {
        for stale in [&out.queries, &out.entry] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(stale)(e)),
            }
        }
        return Err(SynthError::NoQueries {
            seeds: report.seeds,
            report: out.report,
        });
    }
    let mut lines = Vec::new();
    for t in tasks {
        serde_json::to_writer(&mut lines, t).map_err(|e| SynthError::Io {
            path: out.queries.clone(),
            source: std::io::Error::other(e),
        })?;
        lines.push(b'\n');
    }
    crate::rundir::write_atomic(&out.queries, &lines)?;
    let seeds: Vec<&str> = {
        let mut s: Vec<&str> = report
            .per_seed
            .iter()
            .map(|s| s.seed.split('/').next().unwrap_or(""))
            .collect();
        s.dedup();
        s
    };
    let description = format!(
        "{} synthetic queries from {} seed(s) of {} by {} ({PROMPT_VERSION})",
        tasks.len(),
        report.seeds,
        seeds.join(", "),
        report.model
    );
    crate::rundir::write_atomic(
        &out.entry,
        entry_toml(&report.name, &description, QUERIES_FILE, None).as_bytes(),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use dsbox_tasks::{DataFile, DataKind};

    use super::*;

    fn seed(dir: &Path) -> Task {
        let file = dir.join("sales.csv");
        std::fs::write(&file, "a,b\n1,2\n").unwrap();
        Task {
            id: "starter/total-revenue".into(),
            suite: "starter".into(),
            track: Track::Analysis,
            question: "What was the total revenue?".into(),
            context: "Sales.".into(),
            data: vec![DataFile {
                path: "/data/starter/sales.csv".into(),
                host: Some(file),
                kind: DataKind::File,
            }],
            submission: None,
            answer: Some(json!("10")),
            answer_guideline: None,
            metric: MetricSpec::new("exact_match").with("tolerance", 0.03),
            metadata: Map::new(),
        }
    }

    #[test]
    fn proposals_become_tasks_with_provenance() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = seed(tmp.path());
        let props = parse_proposals(
            "1. Query: What is the mean of a?\nAnswer: 1\n2. Query: Mean and max of b?\nAnswer: @mean[2] @max[2]\n3. Query: what is the mean of  A?\nAnswer: 1\n4. Query: No answer here?\n5. Query: What was the total revenue?\nAnswer: 10\n6. Query: Rows?\nAnswer: 1\nMetric: list_match\n7. Query: Extra?\nAnswer: 3\n",
        );
        let prov = Provenance {
            name: "synth",
            model: "m",
            generated_at: "2026-01-01T00:00:00Z",
            trajectory_file: "trajectories/starter/prediction_0_traj_0.json",
            run: tmp.path(),
        };
        let (tasks, rejected) = tasks_from_proposals(&seed, &props, 3, &prov);
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "synth/starter-total-revenue-q1",
                "synth/starter-total-revenue-q2",
                "synth/starter-total-revenue-q7"
            ]
        );
        // The seed's metric is inherited for a plain answer; pairs become list_match with
        // DAEval's literal ground truth and a guideline.
        assert_eq!(tasks[0].metric, seed.metric);
        assert_eq!(tasks[1].metric.name, "list_match");
        assert_eq!(
            tasks[1].answer,
            Some(json!("[['mean', '2'], ['max', '2']]"))
        );
        assert_eq!(
            tasks[1].answer_guideline.as_deref(),
            Some("@mean[value] @max[value]")
        );
        let score = Metric::for_task(&tasks[1])
            .unwrap()
            .score("@max[2] @mean[2.0]", &tasks[1])
            .unwrap();
        assert_eq!(score.value, 1.0);
        let synth = &tasks[0].metadata["synth"];
        assert_eq!(synth["seed_id"], "starter/total-revenue");
        assert_eq!(synth["model"], "m");
        assert_eq!(synth["prompt_version"], PROMPT_VERSION);
        assert!(tasks[0].data[0].host.as_ref().unwrap().is_absolute());
        let reasons: Vec<(usize, &str)> = rejected
            .iter()
            .map(|r| (r.item, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "repeats item 1"),
                (4, "no answer given"),
                (5, "repeats the seed question"),
                (
                    6,
                    "the metric is list_match but the answer has no @name[value] pairs"
                ),
            ]
        );
        // Once n items are accepted, later ones are left out with that reason.
        let (tasks, rejected) = tasks_from_proposals(&seed, &props, 1, &prov);
        assert_eq!(tasks.len(), 1);
        assert!(
            rejected
                .iter()
                .any(|r| r.reason == "more than the 1 items asked for")
        );
    }

    #[test]
    fn metric_hints() {
        assert_eq!(
            metric_hint("exact_match(tolerance=0.05)"),
            Some(MetricSpec::new("exact_match").with("tolerance", 0.05))
        );
        assert_eq!(
            metric_hint("`list_match`"),
            Some(MetricSpec::new("list_match"))
        );
        assert_eq!(metric_hint("bleu"), None);
        assert_eq!(metric_hint("exact_match(colour=1)"), None);
    }

    #[test]
    fn seeds_without_data_are_refused_or_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let good = seed(tmp.path());
        let mut gone = good.clone();
        gone.id = "starter/gone".into();
        gone.data[0].host = Some(tmp.path().join("missing.csv"));
        let mut none = good.clone();
        none.id = "starter/none".into();
        none.data.clear();
        let err = check_seeds(vec![good.clone(), gone.clone(), none.clone()], false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("seeds starter/gone, starter/none have no data on this host (starter/gone names /data/starter/sales.csv, expected at "), "{msg}");
        assert!(msg.contains("dsbox tasks validate"), "{msg}");
        let (kept, notes) = check_seeds(vec![good.clone(), gone, none.clone()], true).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(notes[0].contains("skipped 2 seed(s)"), "{notes:?}");
        // Skipping never leaves nothing.
        assert!(check_seeds(vec![none], true).is_err());
    }

    #[test]
    fn no_tasks_means_no_tasks_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(QUERIES_FILE), "stale\n").unwrap();
        let report = QueriesReport {
            name: "synth".into(),
            model: "m".into(),
            prompt_version: PROMPT_VERSION.into(),
            n: 3,
            seeds: 1,
            generated: 0,
            per_seed: vec![],
        };
        let err = write_outputs(tmp.path(), &[], &report).unwrap_err();
        assert!(
            matches!(err, SynthError::NoQueries { seeds: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("1. Query: ... Answer: ..."),
            "{err}"
        );
        assert!(!tmp.path().join(QUERIES_FILE).exists());
        assert!(tmp.path().join(REPORT_FILE).exists());
    }
}
