//! [`App`]: the state behind every route — the kernel manager and templates, the
//! sandboxes each API hands out ([`Slot`]s in [`Registry`]s), the env sessions, the task
//! suites, the metrics — and the background work: idle reclaim and shutdown.
//!
//! Each sandbox is a [`Slot`]: a [`SandboxKernel`] behind an async mutex (one cell at a
//! time; later requests queue). Work on a kernel runs in a task of its own
//! ([`Slot::with_kernel`]), so a client that disconnects mid-execute cancels nothing:
//! the cell finishes (or times out) and the sandbox stays consistent for the next request.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dsbox_kernel::{
    AcquireOptions, CellResult, CellStatus, Interrupter, KernelLimits, KernelManager, OutputItem,
    SandboxKernel, Template,
};
use dsbox_tasks::{DataRoot, LoadedSuite, SuiteRegistry, Task};

use crate::config::{ServeConfig, data_tree};
use crate::env::EnvSession;
use crate::error::{AppError, Result};
use crate::metrics::{ApiLabel, ExecLabels, Metrics, TemplateLabel};

/// Which API a sandbox belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// DSGym's manager API (`/allocate`, `/session/{id}/...`).
    Manager,
    /// `/v1/sandboxes`.
    Sandbox,
    /// `/v1/envs`.
    Env,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Manager => "manager",
            Api::Sandbox => "sandbox",
            Api::Env => "env",
        }
    }
}

/// How long a busy kernel gets to stop after an interrupt before its sandbox is killed
/// (deallocate, delete, shutdown).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

type KernelFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// One sandbox held by a client.
pub struct Slot {
    pub api: Api,
    /// How errors name it: `container 3`, `sandbox sb-2`, `env env-7`.
    pub label: String,
    /// Its template (container type).
    pub template: String,
    /// The runtime's id of the sandbox (its cgroup name).
    pub sandbox_id: String,
    /// Host pid of the sandbox's init (our child until destroyed).
    pub init_pid: i32,
    kernel: tokio::sync::Mutex<Option<SandboxKernel>>,
    interrupter: Mutex<Option<Interrupter>>,
    kernel_pid: AtomicU32,
    epoch: Instant,
    last_used_ms: AtomicU64,
    busy: AtomicUsize,
    restarting: AtomicBool,
    restarts: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("label", &self.label)
            .field("template", &self.template)
            .field("sandbox_id", &self.sandbox_id)
            .finish_non_exhaustive()
    }
}

/// Marks a slot busy while an operation runs (idle reclaim skips it).
struct BusyGuard(Arc<Slot>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    fn new(api: Api, label: String, template: &str, kernel: SandboxKernel) -> Slot {
        let epoch = Instant::now();
        Slot {
            api,
            label,
            template: template.to_owned(),
            sandbox_id: kernel.id().to_owned(),
            init_pid: kernel.init_pid(),
            interrupter: Mutex::new(kernel.interrupter()),
            kernel_pid: AtomicU32::new(kernel.kernel_pid().unwrap_or(0)),
            kernel: tokio::sync::Mutex::new(Some(kernel)),
            epoch,
            last_used_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            restarting: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last request finished (zero while one runs).
    pub fn idle_for(&self) -> Duration {
        if self.is_busy() {
            return Duration::ZERO;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Host pid of the current kernel, as of the last request (0: none).
    pub fn kernel_pid(&self) -> u32 {
        self.kernel_pid.load(Ordering::Relaxed)
    }

    /// Destroyed (or being destroyed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn is_restarting(&self) -> bool {
        self.restarting.load(Ordering::Relaxed)
    }

    /// Kernels replaced in this sandbox (restarts asked for and lost kernels).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Run `f` on the kernel in a task of its own (it completes even if the caller goes
    /// away), after the cells queued before it.
    pub async fn with_kernel<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut SandboxKernel) -> KernelFuture<'a, T> + Send + 'static,
    {
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.gone());
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        let guard = BusyGuard(self.clone());
        let slot = self.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let mut kernel = slot.kernel.lock().await;
            let Some(k) = kernel.as_mut() else {
                return Err(slot.gone());
            };
            let before = k.restarts();
            let result = f(k).await;
            let after = k.restarts();
            slot.restarts.fetch_add(after - before, Ordering::Relaxed);
            *slot.interrupter.lock().unwrap_or_else(|e| e.into_inner()) = k.interrupter();
            slot.kernel_pid
                .store(k.kernel_pid().unwrap_or(0), Ordering::Relaxed);
            result
        });
        task.await
            .map_err(|e| AppError::Internal(format!("a sandbox task failed: {e}")))?
    }

    fn gone(&self) -> AppError {
        AppError::Gone(format!(
            "{} was destroyed while this request waited for it",
            self.label
        ))
    }

    /// Run a cell. `restart_on_timeout`: DSGym's semantics — a cell that times out is
    /// interrupted and then the kernel is restarted (all variables lost); otherwise the
    /// interrupted kernel keeps its state (dsbox's).
    pub async fn execute(
        self: &Arc<Self>,
        metrics: &Arc<Metrics>,
        code: String,
        timeout: Duration,
        restart_on_timeout: bool,
    ) -> Result<CellResult> {
        let started = Instant::now();
        let api = self.api.as_str();
        let result = self
            .with_kernel(move |k| {
                Box::pin(async move {
                    let mut cell = k.execute(&code, timeout).await?;
                    if restart_on_timeout && cell.status == CellStatus::TimedOut {
                        restart_kernel(k).await;
                        mark_restarted_after_timeout(&mut cell, timeout);
                    }
                    Ok(cell)
                })
            })
            .await;
        metrics
            .execute_seconds
            .get_or_create(&ApiLabel { api })
            .observe(started.elapsed().as_secs_f64());
        let status = match &result {
            Ok(cell) => status_name(&cell.status),
            Err(_) => "failed",
        };
        metrics
            .executes
            .get_or_create(&ExecLabels { api, status })
            .inc();
        result
    }

    /// Replace the kernel with a fresh one in the same sandbox (files stay, variables go).
    pub async fn restart(self: &Arc<Self>) -> Result<()> {
        self.restarting.store(true, Ordering::Relaxed);
        if self.is_busy() {
            self.interrupt();
        }
        let r = self
            .with_kernel(|k| {
                Box::pin(async move {
                    restart_kernel(k).await;
                    Ok(())
                })
            })
            .await;
        self.restarting.store(false, Ordering::Relaxed);
        r
    }

    /// SIGINT to the running cell, if any.
    pub fn interrupt(&self) {
        if let Some(i) = self
            .interrupter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = i.interrupt();
        }
    }

    /// Destroy the sandbox. A busy kernel is interrupted first; if it is still busy after
    /// `grace`, the sandbox's init is killed (which ends everything in it), so this never
    /// waits on user code.
    pub async fn close(&self, grace: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let mut guard = match self.kernel.try_lock() {
            Ok(g) => g,
            Err(_) => {
                self.interrupt();
                match tokio::time::timeout(grace, self.kernel.lock()).await {
                    Ok(g) => g,
                    Err(_) => {
                        tracing::info!(sandbox = %self.label, "still busy after an interrupt: killing its sandbox");
                        // SAFETY: kill(2) on the init of this sandbox, a child of this
                        // process that is not reaped before the sandbox is destroyed.
                        unsafe { libc::kill(self.init_pid, libc::SIGKILL) };
                        match tokio::time::timeout(Duration::from_secs(10), self.kernel.lock())
                            .await
                        {
                            Ok(g) => g,
                            Err(_) => {
                                tracing::warn!(sandbox = %self.label, "its task did not end; the sandbox is destroyed when it does");
                                return;
                            }
                        }
                    }
                }
            }
        };
        if let Some(k) = guard.take()
            && let Err(e) = k.close().await
        {
            tracing::warn!(sandbox = %self.label, "destroying the sandbox: {e}");
        }
    }

    /// A cheap liveness check of the kernel (`None` while it is busy).
    pub async fn probe(self: &Arc<Self>) -> Option<bool> {
        if self.is_busy() {
            return None;
        }
        let r = self
            .with_kernel(|k| {
                Box::pin(async move {
                    let cell = k.execute("None", Duration::from_secs(5)).await?;
                    Ok(cell.status == CellStatus::Ok)
                })
            })
            .await;
        Some(r.unwrap_or(false))
    }
}

/// Ask the kernel to exit: the kernel crate sees it lost and replaces it with a fresh
/// child of the zygote in the same shell (the same path a crashed kernel takes).
async fn restart_kernel(k: &mut SandboxKernel) {
    match k
        .execute("import os as _os\n_os._exit(0)", Duration::from_secs(10))
        .await
    {
        Ok(cell) if cell.needs_restart() || matches!(cell.status, CellStatus::KernelLost(_)) => {}
        Ok(cell) => {
            tracing::warn!(sandbox = %k.id(), status = ?cell.status, "a restart did not end the kernel")
        }
        Err(e) => tracing::warn!(sandbox = %k.id(), "restarting the kernel: {e}"),
    }
}

fn mark_restarted_after_timeout(cell: &mut CellResult, timeout: Duration) {
    for item in &mut cell.items {
        if let OutputItem::Error {
            name,
            value,
            traceback,
        } = item
            && name == "TimeoutError"
        {
            *value = format!(
                "Cell execution timed out after {} s: the kernel was interrupted and restarted, all variables are lost",
                fmt_secs(timeout)
            );
            let line = format!("{name}: {value}");
            match traceback
                .iter_mut()
                .rev()
                .find(|l| l.starts_with("TimeoutError:"))
            {
                Some(last) => *last = line,
                None => traceback.push(line),
            }
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

/// The status label of a cell.
pub fn status_name(status: &CellStatus) -> &'static str {
    match status {
        CellStatus::Ok => "ok",
        CellStatus::Error => "error",
        CellStatus::Interrupted => "interrupted",
        CellStatus::TimedOut => "timed_out",
        CellStatus::KernelLost(dsbox_kernel::LostReason::Unresponsive) => "timed_out_restarted",
        CellStatus::KernelLost(_) => "kernel_lost",
    }
}

/// Something a registry holds: it has a sandbox.
pub trait HasSlot: Send + Sync {
    fn slot(&self) -> &Arc<Slot>;
}

/// Ids of one API and what they hold; ids removed recently are remembered (bounded) so
/// an error can say why they are gone.
pub struct Registry<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
    gone: Mutex<(VecDeque<K>, HashMap<K, String>)>,
}

const GONE_REMEMBERED: usize = 10_000;

impl<K: Eq + Hash + Clone, V> Default for Registry<K, V> {
    fn default() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            gone: Mutex::new((VecDeque::new(), HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone + Ord, V> Registry<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<V>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, k: K, v: Arc<V>) {
        self.lock().insert(k, v);
    }

    /// The value, or why it is gone (`None`: never existed or forgotten).
    pub fn get(&self, k: &K) -> std::result::Result<Arc<V>, Option<String>> {
        if let Some(v) = self.lock().get(k) {
            return Ok(v.clone());
        }
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        Err(gone.1.get(k).cloned())
    }

    /// Remove it, remembering why.
    pub fn remove(&self, k: &K, reason: &str) -> Option<Arc<V>> {
        let v = self.lock().remove(k)?;
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        gone.0.push_back(k.clone());
        gone.1.insert(k.clone(), reason.to_owned());
        while gone.0.len() > GONE_REMEMBERED {
            if let Some(old) = gone.0.pop_front() {
                gone.1.remove(&old);
            }
        }
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids, sorted.
    pub fn ids(&self) -> Vec<K> {
        let mut ids: Vec<K> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn values(&self) -> Vec<(K, Arc<V>)> {
        let mut v: Vec<(K, Arc<V>)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Take everything out (shutdown).
    pub fn drain(&self, reason: &str) -> Vec<Arc<V>> {
        let keys = self.ids();
        keys.iter().filter_map(|k| self.remove(k, reason)).collect()
    }
}

/// The templates of one container type: the configured one and, for sandbox-API clients
/// asking for other limits, templates with those limits.
struct TemplateSet {
    /// (container type, template), in configuration order.
    named: Vec<(String, Template)>,
    /// (container type, limits, template) for custom limits.
    custom: Vec<(String, KernelLimits, Template)>,
}

/// The service's state (see the module docs).
pub struct App {
    pub config: ServeConfig,
    pub manager: KernelManager,
    templates: Mutex<TemplateSet>,
    pub containers: Registry<u64, Slot>,
    pub sandboxes: Registry<String, Slot>,
    pub envs: Registry<String, EnvSession>,
    next_container: AtomicU64,
    next_sandbox: AtomicU64,
    next_env: AtomicU64,
    pub metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
    suites: SuiteRegistry,
    suite_cache: Mutex<HashMap<String, Arc<LoadedSuite>>>,
    /// The tree shown at /data (canonical), from `config.data_root`.
    pub data_tree: Option<PathBuf>,
    started: Instant,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why [`App::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the kernel template `{name}`: {source}")]
    Template {
        name: String,
        #[source]
        source: dsbox_kernel::SandboxError,
    },
    #[error("the data root {path} cannot be used: {source}")]
    DataRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tasks(#[from] dsbox_tasks::TasksError),
    #[error("two templates are named `{0}`: container types must be unique")]
    DuplicateType(String),
}

impl App {
    /// Start the templates (their zygotes preload in the background), load the suite
    /// registry, start the idle reaper. Needs a tokio runtime.
    pub fn start(config: ServeConfig) -> std::result::Result<Arc<App>, StartError> {
        let manager = KernelManager::new(config.manager.clone());
        let mut named = Vec::new();
        for (name, tc) in &config.templates {
            if named.iter().any(|(n, _): &(String, Template)| n == name) {
                return Err(StartError::DuplicateType(name.clone()));
            }
            let t = manager
                .template(tc.clone())
                .map_err(|source| StartError::Template {
                    name: name.clone(),
                    source,
                })?;
            named.push((name.clone(), t));
        }
        let data_tree = match &config.data_root {
            Some(root) => {
                let tree = data_tree(root);
                Some(
                    tree.canonicalize()
                        .map_err(|source| StartError::DataRoot { path: tree, source })?,
                )
            }
            None => None,
        };
        let mut suites = SuiteRegistry::builtin(DataRoot::resolve(config.data_root.as_deref()))?;
        if let Some(dir) = &config.suites_dir {
            suites.add_user_dir(dir)?;
        }
        if let Some(dir) = &config.starter_dir {
            suites.set_starter_dir(dir);
        }
        let app = Arc::new(App {
            manager,
            templates: Mutex::new(TemplateSet {
                named,
                custom: Vec::new(),
            }),
            containers: Registry::default(),
            sandboxes: Registry::default(),
            envs: Registry::default(),
            next_container: AtomicU64::new(1),
            next_sandbox: AtomicU64::new(1),
            next_env: AtomicU64::new(1),
            metrics: Arc::new(Metrics::new()),
            shutting_down: AtomicBool::new(false),
            suites,
            suite_cache: Mutex::new(HashMap::new()),
            data_tree,
            started: Instant::now(),
            config,
        });
        if let Some(idle) = app.config.idle_timeout {
            tokio::spawn(reaper(Arc::downgrade(&app), idle));
        }
        Ok(app)
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_shutting_down() {
            Err(AppError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Container types, in order (the first is the default).
    pub fn type_names(&self) -> Vec<String> {
        self.lock_templates()
            .named
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn default_type(&self) -> Option<String> {
        self.type_names().into_iter().next()
    }

    fn lock_templates(&self) -> std::sync::MutexGuard<'_, TemplateSet> {
        self.templates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The template of a container type (`None`: the default).
    pub fn template(&self, name: Option<&str>) -> Result<(String, Template)> {
        let set = self.lock_templates();
        let found = match name {
            None => set.named.first(),
            Some(n) => set.named.iter().find(|(t, _)| t == n),
        };
        found.cloned().ok_or_else(|| AppError::UnknownType {
            name: name.unwrap_or("<default>").to_owned(),
            known: known_types(&set.named),
        })
    }

    /// The template of a container type with other limits (sandbox API), made on first
    /// use and kept (at most `caps.custom_templates` of them).
    pub fn template_with_limits(
        &self,
        name: Option<&str>,
        limits: KernelLimits,
    ) -> Result<(String, Template)> {
        let (tname, base) = self.template(name)?;
        if base.config().limits == limits {
            return Ok((tname, base));
        }
        let mut set = self.lock_templates();
        if let Some((_, _, t)) = set
            .custom
            .iter()
            .find(|(n, l, _)| *n == tname && *l == limits)
        {
            return Ok((tname, t.clone()));
        }
        if set.custom.len() >= self.config.caps.custom_templates {
            return Err(AppError::BadRequest(format!(
                "this server already serves {} custom limit sets (each needs a zygote of its own): use the template's default limits or one of the limit sets in use",
                set.custom.len()
            )));
        }
        let mut cfg = base.config().clone();
        cfg.limits = limits.clone();
        cfg.pool_size = 0;
        let t = self.manager.template(cfg).map_err(AppError::from)?;
        set.custom.push((tname.clone(), limits, t.clone()));
        Ok((tname, t))
    }

    /// Every template (named and custom), for metrics and stats.
    pub fn all_templates(&self) -> Vec<(String, Template)> {
        let set = self.lock_templates();
        set.named
            .iter()
            .cloned()
            .chain(set.custom.iter().map(|(n, _, t)| (n.clone(), t.clone())))
            .collect()
    }

    /// A sandbox from `template` for `api`, registered under a fresh id.
    pub async fn acquire(
        &self,
        api: Api,
        template: (String, Template),
        options: AcquireOptions,
    ) -> Result<(String, Arc<Slot>)> {
        self.check_open()?;
        let (tname, t) = template;
        let kernel = t.acquire(options).await?;
        if self.is_shutting_down() {
            let _ = kernel.close().await;
            return Err(AppError::ShuttingDown);
        }
        let (key, label) = match api {
            Api::Manager => {
                let id = self.next_container.fetch_add(1, Ordering::Relaxed);
                (id.to_string(), format!("container {id}"))
            }
            Api::Sandbox => {
                let id = format!("sb-{}", self.next_sandbox.fetch_add(1, Ordering::Relaxed));
                (id.clone(), format!("sandbox {id}"))
            }
            Api::Env => {
                let id = format!("env-{}", self.next_env.fetch_add(1, Ordering::Relaxed));
                (id.clone(), format!("env {id}"))
            }
        };
        let slot = Arc::new(Slot::new(api, label, &tname, kernel));
        slot.touch();
        Ok((key, slot))
    }

    /// The mounts that show the data tree at /data (manager API): each top-level entry
    /// of the tree at `/data/<entry>`, read-only.
    pub fn data_tree_mounts(&self) -> Vec<dsbox_kernel::DataMount> {
        let Some(tree) = &self.data_tree else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(tree) else {
            tracing::warn!(tree = %tree.display(), "cannot list the data tree");
            return Vec::new();
        };
        let mut mounts: Vec<dsbox_kernel::DataMount> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name();
                dsbox_kernel::DataMount::new(e.path(), PathBuf::from("/data").join(name))
            })
            .collect();
        mounts.sort_by(|a, b| a.destination.cmp(&b.destination));
        mounts
    }

    /// The suites the env API serves.
    pub fn suites(&self) -> &SuiteRegistry {
        &self.suites
    }

    /// A suite, loaded once (file I/O on a blocking thread).
    pub async fn load_suite(&self, name: &str) -> Result<Arc<LoadedSuite>> {
        if let Some(s) = self
            .suite_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(s.clone());
        }
        let registry = self.suites.clone();
        let n = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || registry.load(&n))
            .await
            .map_err(|e| AppError::Internal(format!("loading a suite: {e}")))??;
        let loaded = Arc::new(loaded);
        self.suite_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// A task by id (`<suite>/<local id>`), with its suite.
    pub async fn find_task(&self, id: &str) -> Result<(Arc<LoadedSuite>, Task)> {
        let suite = self
            .suites
            .suites()
            .iter()
            .filter(|s| id.starts_with(&format!("{}/", s.name)))
            .max_by_key(|s| s.name.len())
            .map(|s| s.name.clone())
            .ok_or_else(|| {
                AppError::Tasks(dsbox_tasks::TasksError::UnknownTask { id: id.to_owned() })
            })?;
        let loaded = self.load_suite(&suite).await?;
        let task = loaded.task(id).cloned().ok_or_else(|| {
            AppError::Tasks(dsbox_tasks::TasksError::UnknownTask { id: id.to_owned() })
        })?;
        Ok((loaded, task))
    }

    /// Update the gauges, then render every metric.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.live.set(self.manager.live() as i64);
        for (api, n) in [
            (Api::Manager, self.containers.len()),
            (Api::Sandbox, self.sandboxes.len()),
            (Api::Env, self.envs.len()),
        ] {
            m.sessions
                .get_or_create(&ApiLabel { api: api.as_str() })
                .set(n as i64);
        }
        let mut ready: HashMap<String, (usize, u64)> = HashMap::new();
        for (name, t) in self.all_templates() {
            let s = t.stats();
            let e = ready.entry(name).or_default();
            e.0 += s.pool_ready;
            e.1 += s.kernel_restarts;
        }
        for (template, (pool, restarts)) in ready {
            let label = TemplateLabel { template };
            m.pool_ready.get_or_create(&label).set(pool as i64);
            m.kernel_restarts.get_or_create(&label).set(restarts as i64);
        }
        m.encode()
    }

    /// Destroy every sandbox (clients' and pooled) and stop the zygotes. New requests get
    /// 503 from here on.
    pub async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::Relaxed) {
            return;
        }
        let reason = "the server shut down";
        let mut slots: Vec<Arc<Slot>> = self.containers.drain(reason);
        slots.extend(self.sandboxes.drain(reason));
        slots.extend(self.envs.drain(reason).iter().map(|e| e.slot().clone()));
        tracing::info!(
            sandboxes = slots.len(),
            "shutting down: destroying every sandbox"
        );
        futures_util::future::join_all(slots.iter().map(|s| s.close(CLOSE_GRACE))).await;
        let templates = {
            let mut set = self.lock_templates();
            let named: Vec<_> = set.named.drain(..).map(|(_, t)| t).collect();
            let custom: Vec<_> = set.custom.drain(..).map(|(_, _, t)| t).collect();
            (named, custom)
        };
        for t in templates.0.iter().chain(templates.1.iter()) {
            t.drain_pool();
        }
        drop(templates);
        // Pooled kernels are destroyed on blocking threads: wait for them.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.manager.live() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.manager.live() > 0 {
            tracing::warn!(
                live = self.manager.live(),
                "some sandboxes were still being destroyed at shutdown"
            );
        }
    }

    /// Destroy what has been idle for longer than `idle` (one pass).
    pub async fn reclaim_idle(&self, idle: Duration) {
        let reason = format!(
            "destroyed after being idle for more than {}",
            humanize(idle)
        );
        let mut victims: Vec<Arc<Slot>> = Vec::new();
        for (id, s) in self.containers.values() {
            if s.idle_for() > idle
                && let Some(s) = self.containers.remove(&id, &reason)
            {
                victims.push(s);
            }
        }
        for (id, s) in self.sandboxes.values() {
            if s.idle_for() > idle
                && let Some(s) = self.sandboxes.remove(&id, &reason)
            {
                victims.push(s);
            }
        }
        for (id, e) in self.envs.values() {
            if e.slot().idle_for() > idle
                && let Some(e) = self.envs.remove(&id, &reason)
            {
                victims.push(e.slot().clone());
            }
        }
        for s in victims {
            tracing::info!(sandbox = %s.label, "reclaiming an idle sandbox");
            self.metrics
                .reclaimed
                .get_or_create(&ApiLabel {
                    api: s.api.as_str(),
                })
                .inc();
            s.close(CLOSE_GRACE).await;
        }
    }
}

impl HasSlot for Arc<Slot> {
    fn slot(&self) -> &Arc<Slot> {
        self
    }
}

fn known_types(named: &[(String, Template)]) -> String {
    if named.is_empty() {
        "no templates".to_owned()
    } else {
        named
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `90 s`, `15 min`, `2 h`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{} s", fmt_secs(d))
    }
}

async fn reaper(app: Weak<App>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    loop {
        tokio::time::sleep(tick).await;
        let Some(app) = app.upgrade() else { return };
        if app.is_shutting_down() {
            return;
        }
        app.reclaim_idle(idle).await;
    }
}
