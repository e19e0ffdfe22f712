//! Integration tests: serve. Real HTTP on loopback against real sandboxed kernels (the
//! `analysis` rootfs from the store, shared with the kernel tests), as root: the DSGym
//! manager API, faults (a client gone mid-cell, a sandbox killed from outside, a full
//! server, a kernel stuck in C code), the env API, the sandbox API, operations, and the
//! `dsbox serve` binary driven by a Python client that uses only `requests`.

mod client;
mod envs;
mod faults;
mod manager;
mod sandboxes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dsbox_kernel::TemplateConfig;
use dsbox_rootfs::{EnsureOptions, Progress, Rootfs, Store};
use dsbox_serve::{App, ServeConfig};
use serde_json::Value;

macro_rules! require_root {
    () => {
        if !crate::is_root() {
            eprintln!("skipped: the service's sandboxes need root");
            return;
        }
    };
}
pub(crate) use require_root;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// target/ (or $CARGO_TARGET_DIR): the test binary is target/<profile>/deps/<name>.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The rootfs store of the tests (the kernel tests' store: one `analysis` build serves
/// both; `$DSBOX_TEST_STORE` overrides it).
pub fn test_store() -> PathBuf {
    std::env::var_os("DSBOX_TEST_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("dsbox-kernel-tests/store"))
}

/// The `analysis` rootfs, built on first use.
pub fn test_rootfs() -> Rootfs {
    static ROOTFS: OnceLock<Rootfs> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let store = test_store();
            let mut opts = EnsureOptions::new(Store::new(&store));
            opts.profiles_dir = None;
            dsbox_rootfs::ensure("analysis", &opts, &Progress::hidden()).unwrap_or_else(|e| {
                panic!(
                    "cannot build the `analysis` rootfs in {} for the serve tests: {e}",
                    store.display()
                )
            })
        })
        .clone()
}

/// The DSGym release copy beside the repo (CI has it), if present.
pub fn shared_data_root() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsgym");
    p.join("data/qrdata").is_dir().then_some(p)
}

/// A small data root of the tests' own (`data/fixture/...`), for everything that must
/// run without ../shared.
pub fn fixture_data_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = target_dir().join("dsbox-serve-tests/data-root");
        let dir = root.join("data/fixture");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("numbers.csv"), "x,y\n1,2\n3,4\n5,6\n").unwrap();
        std::fs::create_dir_all(root.join("data/other")).unwrap();
        std::fs::write(root.join("data/other/secret.txt"), "not for envs\n").unwrap();
        root
    })
    .clone()
}

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

pub fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// The template every test server uses (small pool, 1 GiB per sandbox).
pub fn template() -> TemplateConfig {
    let mut t = TemplateConfig::new(&test_rootfs());
    t.pool_size = 2;
    t.limits.memory = Some(1 << 30);
    t.client.interrupt_grace = Duration::from_secs(2);
    t
}

/// A server on 127.0.0.1:<free port> in this process.
pub struct Server {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start(f: impl FnOnce(&mut ServeConfig)) -> Server {
        let mut cfg = ServeConfig::new(vec![("analysis".into(), template())]);
        cfg.manager.max_sandboxes = 48;
        cfg.data_root = Some(fixture_data_root());
        f(&mut cfg);
        block_on(async move {
            let app = App::start(cfg).expect("the server's templates start");
            for (_, t) in app.all_templates() {
                t.wait_ready().await.expect("the zygote starts");
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(dsbox_serve::serve(listener, app.clone(), async move {
                let _ = stopped.await;
            }));
            Server {
                app,
                addr,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .unwrap(),
                stop: Some(stop),
                task: Some(task),
            }
        })
    }

    /// The server most tests share (one zygote for the binary).
    pub fn shared() -> &'static Server {
        static S: OnceLock<Server> = OnceLock::new();
        S.get_or_init(|| Server::start(|_| {}))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        let r = self.http.post(self.url(path)).send().await.unwrap();
        read(r).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        read(r).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        read(r).await
    }

    /// Allocate a container (manager API); its id.
    pub async fn allocate(&self) -> u64 {
        let (status, body) = self.post_empty("/allocate").await;
        assert_eq!(status, 200, "{body}");
        body["container_id"].as_u64().expect("an integer id")
    }

    /// Execute in a container; its outputs.
    pub async fn exec(&self, id: u64, code: &str) -> Vec<Value> {
        let (status, body) = self
            .post(
                &format!("/session/{id}/execute"),
                serde_json::json!({"code": code}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["outputs"].as_array().expect("outputs").clone()
    }

    /// Stop serving; every sandbox is destroyed.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            block_on(async {
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("the server stops")
                    .expect("the server task")
                    .expect("serve");
            });
        }
    }
}

async fn read(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The `text/plain` of the first result item.
pub fn result_text(outputs: &[Value]) -> Option<String> {
    outputs
        .iter()
        .find(|o| o["type"] == "result")
        .and_then(|o| o["data"]["text/plain"].as_str())
        .map(str::to_owned)
}

/// All stdout text.
pub fn stdout(outputs: &[Value]) -> String {
    outputs
        .iter()
        .filter(|o| o["type"] == "stream" && o["name"] == "stdout")
        .filter_map(|o| o["text"].as_str())
        .collect()
}

/// The first error item's (name, value).
pub fn error(outputs: &[Value]) -> Option<(String, String)> {
    outputs.iter().find(|o| o["type"] == "error").map(|o| {
        (
            o["name"].as_str().unwrap_or_default().to_owned(),
            o["value"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

/// Wait until `f` holds (polling), or fail with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
