//! [`ServeConfig`]: everything the service needs, validated by the CLI (`dsbox serve`)
//! or built directly by tests and benchmarks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dsbox_kernel::{ManagerConfig, TemplateConfig};
use dsbox_tasks::Judge;

/// Upper bounds on what a client of the sandbox API may ask for per sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxCaps {
    /// Largest memory limit (bytes).
    pub memory: u64,
    /// Largest pids limit.
    pub pids: u64,
    /// Largest CPU quota (cores).
    pub cpus: f64,
    /// Largest scratch tmpfs size (bytes).
    pub scratch_size: u64,
    /// Distinct limit sets served at once besides the templates' own (each needs a zygote
    /// of its own: the limits are part of a template's identity).
    pub custom_templates: usize,
}

impl Default for SandboxCaps {
    fn default() -> Self {
        SandboxCaps {
            memory: 8 << 30,
            pids: 1024,
            cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
            scratch_size: 2 << 30,
            custom_templates: 8,
        }
    }
}

/// The service's settings.
#[derive(Clone)]
pub struct ServeConfig {
    /// Templates by container type, in order; the first is the default (`/allocate`
    /// without `container_type`).
    pub templates: Vec<(String, TemplateConfig)>,
    /// Caps shared by every template (live sandboxes, memory, how long an acquire waits).
    pub manager: ManagerConfig,
    /// The DSGym release root (`task/`, `data/`, `leaderboard/`): the manager API mounts
    /// its data tree at /data, the sandbox API mounts files from it, the env API finds the
    /// DSGym suites there. `None`: no data (the env API still has `starter`).
    pub data_root: Option<PathBuf>,
    /// Extra suite entries (`*.toml`) for the env API.
    pub suites_dir: Option<PathBuf>,
    /// Where the starter suite writes its data (default: the tasks crate's).
    pub starter_dir: Option<PathBuf>,
    /// Bearer token every route but `/health` requires.
    pub token: Option<String>,
    /// Largest JSON request body (bytes).
    pub max_body: usize,
    /// Largest file upload (bytes).
    pub max_upload: usize,
    /// Largest file download (bytes).
    pub max_download: u64,
    /// Cell timeout when the request names none (DSGym: 180 s).
    pub exec_timeout: Duration,
    /// Largest cell timeout a request may ask for.
    pub max_exec_timeout: Duration,
    /// Sandboxes (and envs) unused for this long are destroyed. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// `Retry-After` (seconds) on 429/503 when the server is full.
    pub retry_after_secs: u64,
    /// Limits a sandbox-API client may ask for.
    pub caps: SandboxCaps,
    /// For LLM-judge metrics in the env API (`None`: reward null with a note).
    pub judge: Option<Arc<dyn Judge>>,
    /// A readable name of the judge (for notes and `/v1/info`).
    pub judge_name: Option<String>,
    /// Most turns an env may be created with.
    pub max_turns_cap: u32,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field(
                "templates",
                &self.templates.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("manager", &self.manager)
            .field("data_root", &self.data_root)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_body", &self.max_body)
            .field("exec_timeout", &self.exec_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("judge", &self.judge_name)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Defaults around these templates (the first is the default container type).
    pub fn new(templates: Vec<(String, TemplateConfig)>) -> ServeConfig {
        ServeConfig {
            templates,
            manager: ManagerConfig {
                max_sandboxes: 128,
                acquire_timeout: Duration::from_millis(500),
                ..ManagerConfig::default()
            },
            data_root: None,
            suites_dir: None,
            starter_dir: None,
            token: None,
            max_body: 16 << 20,
            max_upload: 256 << 20,
            max_download: 256 << 20,
            exec_timeout: Duration::from_secs(180),
            max_exec_timeout: Duration::from_secs(3600),
            idle_timeout: Some(Duration::from_secs(3600)),
            retry_after_secs: 1,
            caps: SandboxCaps::default(),
            judge: None,
            judge_name: None,
            max_turns_cap: 200,
        }
    }
}

/// The tree the manager API shows at /data: `<root>/data` for a DSGym release root (task
/// paths say `/data/<suite>/...` and live in `<root>/data/<suite>/...`), else the
/// directory itself.
pub fn data_tree(root: &Path) -> PathBuf {
    let data = root.join("data");
    if data.is_dir() {
        data
    } else {
        root.to_path_buf()
    }
}
