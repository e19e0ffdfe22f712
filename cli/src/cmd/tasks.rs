//! `dsbox tasks`: list, show and validate benchmark tasks (and list the suites).
//!
//! `validate` exits 1 when it finds any problem (missing data file, answer that does not
//! parse for its metric, unknown metric, unreadable record or suite file), so it can gate
//! CI; 0 when everything is clean.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use dsbox_tasks::paths::{Origin, default_prompts_dir, default_suites_dir};
use dsbox_tasks::{DataRoot, LoadedSuite, Problem, Prompts, SuiteRegistry, Task, TasksError};
use serde_json::json;

/// Where suites come from and how to print; shared by `dsbox tasks` and `dsbox score`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SuiteSourceArgs {
    /// DSGym release directory (holding task/, data/, leaderboard/). Default: $DSBOX_DATA_ROOT,
    /// else $XDG_DATA_HOME/dsbox/dsgym (~/.local/share/dsbox/dsgym).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_root: Option<PathBuf>,
    /// Directory of user suite entries (*.toml). Default: $DSBOX_SUITES_DIR, else
    /// $XDG_CONFIG_HOME/dsbox/suites (~/.config/dsbox/suites), when it exists.
    #[arg(long, value_name = "DIR", global = true)]
    pub suites_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the starter suite writes its generated data (default: $DSBOX_STARTER_DIR,
    /// else ~/.cache/dsbox/starter).
    #[arg(long, value_name = "DIR", global = true, hide = true)]
    pub starter_dir: Option<PathBuf>,
}

impl SuiteSourceArgs {
    /// The registry: built-in suites plus the user's entries.
    pub fn registry(&self) -> anyhow::Result<SuiteRegistry> {
        let mut reg = SuiteRegistry::builtin(DataRoot::resolve(self.data_root.as_deref()))?;
        if let Some(dir) = &self.starter_dir {
            reg.set_starter_dir(dir);
        }
        match &self.suites_dir {
            Some(dir) => reg
                .add_user_dir(dir)
                .with_context(|| format!("loading suite entries from {}", dir.display()))?,
            None => {
                let dir = default_suites_dir();
                if dir.is_dir() {
                    reg.add_user_dir(&dir)?;
                }
            }
        }
        Ok(reg)
    }
}

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub source: SuiteSourceArgs,
    #[command(subcommand)]
    pub command: TasksCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// List tasks in file order (all suites, or one).
    List {
        /// Only this suite.
        #[arg(long, value_name = "SUITE")]
        suite: Option<String>,
    },
    /// Show one task's record (and, with --prompt, its rendered prompts).
    Show {
        /// Task id, e.g. qrdata/0 or starter/total-revenue.
        id: String,
        /// Also render the system and user prompts.
        #[arg(long)]
        prompt: bool,
        /// Directory of prompt templates overriding the built-in ones (same file names).
        /// Default: $DSBOX_PROMPTS_DIR, else ~/.config/dsbox/prompts, when it exists.
        #[arg(long, value_name = "DIR")]
        prompts_dir: Option<PathBuf>,
    },
    /// Check tasks: data files present, answers parse for their metric, metrics known.
    /// One line per problem, then a summary; exits 1 if there is any problem.
    Validate {
        /// Only this suite.
        #[arg(long, value_name = "SUITE")]
        suite: Option<String>,
    },
    /// List the known suites with their task counts.
    Suites,
}

pub fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    match run_with(args, &mut out, &mut err) {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// `head` closing the pipe is not an error worth a message.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(io::ErrorKind::BrokenPipe)
    })
}

pub fn run_with(
    args: TasksArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let reg = args.source.registry()?;
    let json = args.source.json;
    match args.command {
        TasksCommand::List { suite } => list(&reg, suite.as_deref(), json, out, err),
        TasksCommand::Show {
            id,
            prompt,
            prompts_dir,
        } => show(&reg, &id, prompt, prompts_dir, json, out),
        TasksCommand::Validate { suite } => validate(&reg, suite.as_deref(), json, out, err),
        TasksCommand::Suites => suites(&reg, json, out, err),
    }
}

/// The suites to work on: one by name, or all. When all are asked for and the data root
/// is the unset default and missing, the DSGym suites are skipped with one note (a user
/// without the DSGym data still gets the starter and their own suites).
fn selected<'r>(
    reg: &'r SuiteRegistry,
    suite: Option<&str>,
    err: &mut dyn Write,
) -> anyhow::Result<Vec<&'r str>> {
    if let Some(name) = suite {
        return Ok(vec![reg.get(name)?.name.as_str()]);
    }
    let root = reg.data_root();
    let skip_dsgym = root.origin == Origin::Default && root.require().is_err();
    if skip_dsgym {
        writeln!(
            err,
            "dsbox: note: DSGym suites skipped: data root {} does not exist; set --data-root DIR or DSBOX_DATA_ROOT",
            root.path.display()
        )?;
    }
    Ok(reg
        .suites()
        .iter()
        .filter(|d| !(skip_dsgym && SuiteRegistry::needs_data_root(d)))
        .map(|d| d.name.as_str())
        .collect())
}

fn one_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn summary_json(t: &Task) -> serde_json::Value {
    json!({
        "id": t.id,
        "suite": t.suite,
        "track": t.track,
        "metric": t.metric.name,
        "question": t.question,
        "data": t.data.iter().map(|d| &d.path).collect::<Vec<_>>(),
        "has_answer": t.answer_text().is_some(),
    })
}

fn list(
    reg: &SuiteRegistry,
    suite: Option<&str>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut records = Vec::new();
    let mut failed = false;
    for name in selected(reg, suite, err)? {
        let loaded = match reg.load(name) {
            Ok(l) => l,
            Err(e) if suite.is_none() => {
                writeln!(err, "dsbox: error: suite {name}: {e}")?;
                failed = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !loaded.problems.is_empty() {
            writeln!(
                err,
                "dsbox: note: {name}: {} record(s) could not be loaded; see `dsbox tasks validate --suite {name}`",
                loaded.problems.len()
            )?;
        }
        for t in &loaded.tasks {
            if json {
                records.push(summary_json(t));
            } else {
                writeln!(
                    out,
                    "{:<44} {:<10} {:<18} {}",
                    t.id,
                    t.track.to_string(),
                    t.metric.name,
                    one_line(&t.question, 90)
                )?;
            }
        }
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &records)?;
        writeln!(out)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn show(
    reg: &SuiteRegistry,
    id: &str,
    prompt: bool,
    prompts_dir: Option<PathBuf>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (suite, task) = reg.find_task(id)?;
    let rendered = if prompt {
        let dir = prompts_dir.or_else(|| Some(default_prompts_dir()).filter(|d| d.is_dir()));
        if let Some(d) = &dir
            && !d.is_dir()
        {
            anyhow::bail!(
                "prompts directory {} does not exist; pass an existing directory to --prompts-dir",
                d.display()
            );
        }
        Some(Prompts::with_override_dir(dir).render(&task, &suite.def)?)
    } else {
        None
    };
    if json {
        let mut value = serde_json::to_value(&task)?;
        if let (Some(p), Some(obj)) = (&rendered, value.as_object_mut()) {
            obj.insert("prompt".into(), serde_json::to_value(p)?);
        }
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    write_task(&task, out)?;
    if let Some(p) = rendered {
        writeln!(
            out,
            "\n--- system prompt ---\n{}\n--- user prompt ---\n{}",
            p.system.trim_end(),
            p.user.trim_end()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_task(t: &Task, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "id:        {}", t.id)?;
    writeln!(out, "suite:     {}", t.suite)?;
    writeln!(out, "track:     {}", t.track)?;
    let params = if t.metric.params.is_empty() {
        String::new()
    } else {
        format!(" {}", serde_json::Value::Object(t.metric.params.clone()))
    };
    writeln!(out, "metric:    {}{params}", t.metric.name)?;
    for (i, d) in t.data.iter().enumerate() {
        let label = if i == 0 { "data:" } else { "" };
        let host = d.host.as_ref().map_or_else(
            || "no host path".to_owned(),
            |h| format!("host {}", h.display()),
        );
        writeln!(out, "{label:<10} {} ({host})", d.path)?;
    }
    if let Some(s) = &t.submission {
        writeln!(out, "output:    {s}")?;
    }
    writeln!(
        out,
        "answer:    {}",
        t.answer_text().unwrap_or_else(|| "(none)".into())
    )?;
    if let Some(g) = &t.answer_guideline {
        writeln!(out, "guideline: {}", one_line(g, 200))?;
    }
    writeln!(out, "question:\n{}", indent(&t.question))?;
    if !t.context.is_empty() {
        writeln!(out, "context:\n{}", indent(&t.context))?;
    }
    if !t.metadata.is_empty() {
        let keys: Vec<&str> = t.metadata.keys().map(String::as_str).collect();
        writeln!(out, "metadata:  {} (see --json)", keys.join(", "))?;
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn validate(
    reg: &SuiteRegistry,
    suite: Option<&str>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    struct Report {
        suite: String,
        tasks: usize,
        problems: Vec<Problem>,
        error: Option<String>,
    }
    let mut reports = Vec::new();
    for name in selected(reg, suite, err)? {
        let report = match reg.load(name) {
            Ok(loaded) => {
                let problems = LoadedSuite::validate(&loaded);
                Report {
                    suite: name.to_owned(),
                    tasks: loaded.tasks.len(),
                    problems,
                    error: None,
                }
            }
            Err(e @ TasksError::UnknownSuite { .. }) => return Err(e.into()),
            Err(e) => Report {
                suite: name.to_owned(),
                tasks: 0,
                problems: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        if !json {
            if let Some(e) = &report.error {
                writeln!(out, "{name}: suite-error: {e}")?;
            }
            for p in &report.problems {
                writeln!(out, "{p}")?;
            }
        }
        reports.push(report);
    }
    let total: usize = reports
        .iter()
        .map(|r| r.problems.len() + usize::from(r.error.is_some()))
        .sum();
    if json {
        let suites: Vec<_> = reports
            .iter()
            .map(|r| json!({"suite": r.suite, "tasks": r.tasks, "error": r.error, "problems": r.problems}))
            .collect();
        serde_json::to_writer_pretty(
            &mut *out,
            &json!({"suites": suites, "total_problems": total}),
        )?;
        writeln!(out)?;
    } else {
        writeln!(out, "summary:")?;
        for r in &reports {
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for p in &r.problems {
                *kinds.entry(p.kind.as_str()).or_default() += 1;
            }
            let detail = if let Some(e) = &r.error {
                format!("could not be loaded: {e}")
            } else if kinds.is_empty() {
                "ok".to_owned()
            } else {
                let affected: std::collections::BTreeSet<&str> =
                    r.problems.iter().map(|p| p.task_id.as_str()).collect();
                let by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                format!(
                    "{} problem(s) in {} task(s): {}",
                    r.problems.len(),
                    affected.len(),
                    by_kind.join(", ")
                )
            };
            writeln!(out, "  {:<20} {:>5} tasks  {detail}", r.suite, r.tasks)?;
        }
        writeln!(out, "{total} problem(s) in {} suite(s)", reports.len())?;
    }
    Ok(if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn suites(
    reg: &SuiteRegistry,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let root_ok = reg.data_root().require().is_ok();
    let mut rows = Vec::new();
    for def in reg.suites() {
        let needs_root = SuiteRegistry::needs_data_root(def);
        let count = if needs_root && !root_ok {
            Err("data root missing".to_owned())
        } else {
            reg.load(&def.name)
                .map(|l| l.tasks.len())
                .map_err(|e| e.to_string())
        };
        let origin = match &def.origin {
            dsbox_tasks::suite::SuiteOrigin::Builtin => "built-in".to_owned(),
            dsbox_tasks::suite::SuiteOrigin::User(p) => p.display().to_string(),
        };
        let metric = def.metric.as_ref().map_or_else(
            || {
                if def.format == dsbox_tasks::SuiteFormat::Dspredict {
                    "leaderboard".into()
                } else {
                    "per task".into()
                }
            },
            |m| m.name.clone(),
        );
        rows.push((def, count, origin, metric));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(d, c, o, m)| {
                json!({"name": d.name, "description": d.description, "format": d.format, "track": d.track,
                       "metric": m, "tasks": c.as_ref().ok(), "error": c.as_ref().err(), "origin": o})
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        for (d, c, _, m) in &rows {
            let count = c
                .as_ref()
                .map_or_else(|_| "-".to_owned(), ToString::to_string);
            writeln!(
                out,
                "{:<20} {:>5}  {:<10} {:<18} {}",
                d.name,
                count,
                d.track.to_string(),
                m,
                d.description
            )?;
        }
        if !root_ok {
            writeln!(
                err,
                "dsbox: note: {}",
                TasksError::DataRootMissing {
                    path: reg.data_root().path.clone(),
                    origin: reg.data_root().origin.to_string()
                }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    /// Parse a `dsbox tasks ...` command line as the real binary would.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Tasks(TasksArgs),
    }

    pub(crate) struct Run {
        pub code: ExitCode,
        pub out: String,
        pub err: String,
    }

    /// `$DSBOX_DSGYM_DATA`, else `<repo>/../shared/data/dsgym`.
    pub(crate) fn shared_data() -> Option<PathBuf> {
        let dir = std::env::var_os("DSBOX_DSGYM_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsgym")
            });
        if dir.join("task").is_dir() {
            Some(dir)
        } else {
            eprintln!("skipping: DSGym data not found at {}", dir.display());
            None
        }
    }

    fn tasks(tmp: &std::path::Path, args: &[&str]) -> anyhow::Result<Run> {
        let starter = tmp.join("starter").display().to_string();
        let mut argv = vec!["dsbox", "tasks", "--starter-dir", starter.as_str()];
        argv.extend_from_slice(args);
        let Top::Tasks(parsed) = Cli::try_parse_from(argv)?.cmd;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(parsed, &mut out, &mut err)?;
        Ok(Run {
            code,
            out: String::from_utf8(out)?,
            err: String::from_utf8(err)?,
        })
    }

    #[test]
    fn list_starter_as_text_and_json() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tasks(tmp.path(), &["list", "--suite", "starter"]).unwrap();
        assert_eq!(r.code, ExitCode::SUCCESS);
        assert_eq!(r.out.lines().count(), 12);
        assert!(r.out.starts_with("starter/total-revenue"));
        let r = tasks(tmp.path(), &["list", "--suite", "starter", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
        let ids: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 12);
        assert_eq!(ids[0], "starter/total-revenue");
        // --json is accepted before the subcommand too.
        let r = tasks(tmp.path(), &["--json", "list", "--suite", "starter"]).unwrap();
        assert!(r.out.trim_start().starts_with('['));
    }

    #[test]
    fn an_explicit_missing_data_root_is_an_error_per_dsgym_suite() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nowhere").display().to_string();
        let r = tasks(tmp.path(), &["--data-root", &missing, "list"]).unwrap();
        assert_eq!(r.code, ExitCode::FAILURE);
        assert!(r.out.contains("starter/busy-days"), "starter still listed");
        assert!(
            r.err.contains(&format!(
                "suite qrdata: data root {missing} does not exist (from --data-root)"
            )),
            "{}",
            r.err
        );
        let err = tasks(
            tmp.path(),
            &["--data-root", &missing, "list", "--suite", "daeval"],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("does not exist") && err.contains("DSBOX_DATA_ROOT"),
            "{err}"
        );
    }

    #[test]
    fn show_with_prompt() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tasks(tmp.path(), &["show", "starter/peak-day", "--prompt"]).unwrap();
        assert!(r.out.contains("id:        starter/peak-day"));
        assert!(
            r.out
                .contains("--- user prompt ---\nQUESTION:\nOn which date were visits highest?"),
            "{}",
            r.out
        );
        let r = tasks(
            tmp.path(),
            &["show", "starter/peak-day", "--json", "--prompt"],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
        assert_eq!(v["id"], "starter/peak-day");
        assert!(v["prompt"]["system"].as_str().unwrap().contains("<python>"));
        let err = tasks(tmp.path(), &["show", "starter/none"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown task `starter/none`"), "{err}");
        let missing = tmp.path().join("no-prompts").display().to_string();
        let err = tasks(
            tmp.path(),
            &[
                "show",
                "starter/peak-day",
                "--prompt",
                "--prompts-dir",
                &missing,
            ],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--prompts-dir"), "{err}");
    }

    #[test]
    fn validate_exit_codes_and_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tasks(tmp.path(), &["validate", "--suite", "starter"]).unwrap();
        assert_eq!(r.code, ExitCode::SUCCESS, "{}", r.out);
        assert!(r.out.ends_with("0 problem(s) in 1 suite(s)\n"), "{}", r.out);
        let suites = tmp.path().join("suites");
        std::fs::create_dir_all(&suites).unwrap();
        std::fs::write(
            suites.join("u.toml"),
            "name = \"u\"\nformat = \"dsbox\"\nfiles = [\"t.jsonl\"]\n",
        )
        .unwrap();
        std::fs::write(suites.join("t.jsonl"), "{\"id\": \"a\", \"question\": \"q\", \"data\": [\"/data/x.csv\"], \"answer\": \"1\"}\n").unwrap();
        let dir = suites.display().to_string();
        let r = tasks(
            tmp.path(),
            &["--suites-dir", &dir, "validate", "--suite", "u"],
        )
        .unwrap();
        assert_eq!(r.code, ExitCode::FAILURE);
        assert!(
            r.out
                .starts_with("u/a: missing-data: data file /data/x.csv is missing"),
            "{}",
            r.out
        );
        assert!(
            r.out.contains("1 problem(s) in 1 task(s): missing-data 1"),
            "{}",
            r.out
        );
        let r = tasks(
            tmp.path(),
            &["--suites-dir", &dir, "validate", "--suite", "u", "--json"],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
        assert_eq!(v["total_problems"], 1);
        assert_eq!(v["suites"][0]["problems"][0]["task_id"], "u/a");
        assert_eq!(v["suites"][0]["problems"][0]["kind"], "missing-data");
        let err = tasks(tmp.path(), &["validate", "--suite", "nope"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown suite `nope`"), "{err}");
    }

    #[test]
    fn validate_the_shared_data() {
        let Some(root) = shared_data() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let root = root.display().to_string();
        let r = tasks(tmp.path(), &["--data-root", &root, "validate"]).unwrap();
        assert_eq!(r.code, ExitCode::FAILURE);
        assert!(
            r.out.contains(
                "dabstep-dev/5: missing-data: data file /data/dabstep/payments.csv is missing"
            ),
            "{}",
            &r.out[..500]
        );
        assert!(
            r.out.contains(
                "dabstep-dev             10 tasks  10 problem(s) in 10 task(s): missing-data 10"
            ),
            "{}",
            r.out
        );
        assert!(r.out.contains("qrdata                 200 tasks  ok"));
        let r = tasks(tmp.path(), &["--data-root", &root, "suites"]).unwrap();
        assert!(r.out.contains("dspredict-hard          54"), "{}", r.out);
    }
}
