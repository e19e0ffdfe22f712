//! A fake OpenAI-compatible server on loopback that plays the scripted analyst for the
//! built-in starter suite (and QRData/DAEval tasks when a data root is given), for trying
//! `dsbox eval` without a model or a key, and for tests outside Rust.
//!
//! ```text
//! cargo run -p dsbox-agent --example fake_llm -- [--port 8077] [--data-root DIR]
//!     [--starter-dir DIR] [--wrong-rate 0.3] [--delay-ms 0]
//! dsbox eval --suite starter --model fake-model --base-url http://127.0.0.1:8077/v1 --k 3
//! ```
//!
//! `--wrong-rate` makes that share of final answers wrong (at random), so pass@k and the
//! reports have something to show.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dsbox_agent::demo;
use dsbox_agent::fake::{FakeConfig, FakeReply, FakeServer, Script};
use dsbox_agent::model::{ChatRequest, Message, answer_from_last_output};
use dsbox_tasks::{DataRoot, SuiteRegistry, Task};
use rand::Rng;

struct Args {
    port: u16,
    data_root: Option<PathBuf>,
    starter_dir: Option<PathBuf>,
    wrong_rate: f64,
    delay: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        port: 8077,
        data_root: None,
        starter_dir: None,
        wrong_rate: 0.0,
        delay: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => a.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--data-root" => a.data_root = Some(value()?.into()),
            "--starter-dir" => a.starter_dir = Some(value()?.into()),
            "--wrong-rate" => {
                a.wrong_rate = value()?.parse().map_err(|e| format!("--wrong-rate: {e}"))?
            }
            "--delay-ms" => {
                a.delay =
                    Duration::from_millis(value()?.parse().map_err(|e| format!("--delay-ms: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fake_llm: {e}");
            return ExitCode::from(2);
        }
    };
    let mut reg = match SuiteRegistry::builtin(DataRoot::resolve(args.data_root.as_deref())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fake_llm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(d) = &args.starter_dir {
        reg.set_starter_dir(d);
    }
    let mut tasks: Vec<Task> = Vec::new();
    for suite in ["starter", "qrdata", "daeval"] {
        if let Ok(s) = reg.load(suite) {
            tasks.extend(s.tasks);
        }
    }
    let refs: Vec<&Task> = tasks.iter().collect();
    let programs = demo::programs_for(&refs);
    eprintln!("fake_llm: {} scripted tasks", programs.len());
    let (wrong_rate, delay) = (args.wrong_rate, args.delay);
    let script = Script::handler(move |r| {
        let first = r.first_user();
        let reply = match programs
            .iter()
            .find(|p| p.matches.iter().all(|m| first.contains(m.as_str())))
        {
            None => FakeReply::text("OK"),
            Some(p) => match p.cells.get(r.assistant_turns()) {
                Some(cell) => FakeReply::text(format!("<python>\n{cell}\n</python>")),
                None => {
                    let last = ChatRequest {
                        messages: vec![Message::user(r.last_content())],
                        ..ChatRequest::default()
                    };
                    let mut answer = answer_from_last_output(&last).unwrap_or_default();
                    if rand::rng().random_bool(wrong_rate.clamp(0.0, 1.0)) {
                        answer = "42".into();
                    }
                    FakeReply::text(format!("<answer>{answer}</answer>"))
                }
            },
        };
        FakeReply::delayed(delay, reply)
    });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake_llm: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match FakeServer::start_on(args.port, FakeConfig::default(), script).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fake_llm: cannot listen on port {}: {e}", args.port);
                return ExitCode::FAILURE;
            }
        };
        println!("{}", server.base_url());
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
