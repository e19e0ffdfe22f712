//! dsbox-agent: the agent loop — an OpenAI-compatible model client, the tag-protocol and
//! tool-calling scaffolds, parallel rollouts in sandboxes, trajectories that survive
//! crashes, pass@k metrics and reports.
//!
//! Main types:
//! - [`model::Model`] with [`model::OpenAiModel`] (HTTP, retries, concurrency limit,
//!   token usage; also a [`dsbox_tasks::Judge`]) and [`model::ScriptedModel`] (in-process
//!   programs whose code computes the answers; `dsbox demo`, `dsbox bench eval`).
//! - [`protocol`]: the reference's tag protocol and output cleaning, as pure functions;
//!   [`scaffold::Scaffold`]: `react` (tags) and `tools` (OpenAI tool calling).
//! - [`sandbox::CodeSandbox`] / [`sandbox::SandboxFactory`]: where code runs;
//!   [`sandbox::ColdFactory`] starts a fresh `dsbox-runtime` sandbox per episode.
//! - [`episode::run_episode`] → [`episode::Trajectory`]; [`run::run_eval`] rolls out N
//!   tasks × k trajectories into a [`rundir::RunDir`] (results appended and fsync'd per
//!   trajectory, resumable); [`metrics`] computes mean, pass@k (max over k and unbiased),
//!   turns, tokens, time and the error breakdown; [`report`] renders tables, Markdown and
//!   a self-contained HTML report.
//! - [`fake::FakeServer`]: a fake OpenAI-compatible server (real HTTP) for tests.
//! - [`synth`]: synthetic training data (query generation, rollouts, execution-verified
//!   filtering, SFT export) and the shortcut audit.

pub mod demo;
pub mod episode;
pub mod fake;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod protocol;
pub mod record;
pub mod report;
pub mod run;
pub mod rundir;
pub mod sandbox;
pub mod scaffold;
pub mod synth;

pub use episode::{EndReason, EpisodeSettings, Trajectory, run_episode};
pub use model::{Model, ModelError, OpenAiConfig, OpenAiModel, ScriptedModel};
pub use record::ResultRecord;
pub use run::{EvalSetup, PlannedItem, RunEnd, RunObserver, RunReport, run_eval};
pub use rundir::{RunDir, RunError, RunManifest};
pub use sandbox::{CodeSandbox, SandboxFactory, SandboxRequest};
pub use scaffold::ScaffoldKind;
