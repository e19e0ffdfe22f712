//! Integration tests: synth. The whole training-data pipeline as users run it — `dsbox
//! synth queries → trajectories → filter → export` and `dsbox audit shortcut` — against the
//! fake OpenAI-compatible server (real HTTP on loopback) playing the scripted analyst, with
//! real sandboxes (dsbox-runtime + the kernel program, the `eval-test` rootfs). They run as
//! root (namespaces, cgroups).

mod audit;
mod bad_input;
mod pipeline;
mod resume;
mod verify;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use dsbox_rootfs::{EnsureOptions, Progress, Rootfs, Store};
use tokio::process::Command;

/// The rootfs of these tests (the eval tests' `eval-test`: numpy, pandas, matplotlib),
/// built once into the same store under the target dir.
pub const ROOTFS: &str = "eval-test";

/// target/ (or $CARGO_TARGET_DIR): the test binary is target/<profile>/deps/<name>.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// The store holding the test rootfs (shared with the eval tests), and its profiles dir.
pub fn store_and_profiles() -> (PathBuf, PathBuf) {
    let base = target_dir().join("dsbox-eval-tests");
    let profiles = base.join("profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    std::fs::write(
        profiles.join(format!("{ROOTFS}.toml")),
        "description = \"dsbox eval tests\"\npackages = [\"numpy\", \"pandas\", \"matplotlib\"]\npreload = [\"pandas\", \"numpy\"]\n",
    )
    .expect("write the test profile");
    (base.join("store"), profiles)
}

/// The test rootfs (built on first use; `ensure` serialises concurrent builds).
pub fn rootfs() -> Rootfs {
    static ROOT: OnceLock<Rootfs> = OnceLock::new();
    ROOT.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the synth tests need root (sandboxes use namespaces and cgroups)"
        );
        let (store, profiles) = store_and_profiles();
        let mut opts = EnsureOptions::new(Store::new(store));
        opts.profiles_dir = Some(profiles);
        dsbox_rootfs::ensure(ROOTFS, &opts, &Progress::hidden())
            .unwrap_or_else(|e| panic!("building the test rootfs failed: {e}"))
    })
    .clone()
}

/// The DSGym data shipped beside the checkout (CI has it), if present.
pub fn dsgym_root() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DSBOX_DSGYM_DATA").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsgym")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("task").is_dir())
}

/// A scratch directory under the target dir (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    let base = target_dir().join("dsbox-synth-tests");
    std::fs::create_dir_all(&base).expect("scratch base");
    tempfile::tempdir_in(base).expect("scratch dir")
}

/// `dsbox <args>` with a private starter dir, the test store for commands that run
/// sandboxes, no API key in the environment.
pub fn dsbox(starter: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(dsbox_tests::dsbox_bin());
    cmd.args(args);
    let runs_sandboxes = matches!(
        args,
        ["synth", "queries" | "trajectories" | "filter", ..] | ["audit", "shortcut", ..]
    );
    if runs_sandboxes {
        let _ = rootfs();
        let (store, _) = store_and_profiles();
        cmd.arg("--store").arg(&store);
    }
    if matches!(args.first(), Some(&"synth" | &"audit" | &"tasks")) {
        cmd.arg("--starter-dir").arg(starter);
    }
    cmd.env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DSBOX_DATA_ROOT")
        .env("DSBOX_PROFILES", "/nonexistent-dsbox-profiles")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub async fn output(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("dsbox finished in time")
        .expect("run dsbox")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The lines of a JSONL file, parsed.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Check an exported chat file the way an SFT trainer would read it: every line a JSON
/// object with `messages`, roles system?/user/assistant alternating from a user turn and
/// ending with the assistant, no empty content, observations as `<information>` user
/// turns. Returns the conversations.
pub fn check_chat_jsonl(path: &Path) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in jsonl(path).iter().enumerate() {
        let msgs = line["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("line {}: no messages array: {line}", n + 1));
        let turns: Vec<(String, String)> = msgs
            .iter()
            .map(|m| {
                assert_eq!(
                    m.as_object().unwrap().len(),
                    2,
                    "only role and content: {m}"
                );
                (
                    m["role"].as_str().expect("role").to_owned(),
                    m["content"].as_str().expect("content").to_owned(),
                )
            })
            .collect();
        assert_eq!(turns[0].0, "system", "line {}", n + 1);
        let body = &turns[1..];
        assert!(body.len() >= 2, "line {}: too short", n + 1);
        for (i, (role, content)) in body.iter().enumerate() {
            let want = if i % 2 == 0 { "user" } else { "assistant" };
            assert_eq!(role, want, "line {} turn {}", n + 1, i + 2);
            assert!(
                !content.trim().is_empty(),
                "line {} turn {} is empty",
                n + 1,
                i + 2
            );
            if i > 0 && role == "user" {
                assert!(
                    content.contains("<information>") && content.contains("</information>"),
                    "observation turns are wrapped: {content}"
                );
            }
            if role == "assistant" && i + 1 < body.len() {
                assert!(
                    content.contains("<python>"),
                    "a middle assistant turn runs code: {content}"
                );
            }
        }
        let last = &body[body.len() - 1];
        assert!(
            last.0 == "assistant"
                && last.1.starts_with("<answer>")
                && last.1.ends_with("</answer>"),
            "line {} ends with the answer: {:?}",
            n + 1,
            last
        );
        out.push(turns);
    }
    out
}
