//! Sandboxed kernels on cgroup v2: the zygote (a sandbox without a pid namespace, in its
//! own leaf) forks kernels that each move into the v2 leaf of their own shell (by
//! writing to the shell's `cgroup.procs` fd, handed over by SCM_RIGHTS), so each kernel's
//! memory and pids limits, OOM and kill-all are its own; killing the zygote's cgroup
//! takes no kernel along.

use std::path::PathBuf;
use std::time::Duration;

use dsbox_kernel::{
    AcquireOptions, CellResult, KernelManager, ManagerConfig, SandboxKernel, Template,
    TemplateConfig, ZygoteState,
};
use dsbox_rootfs::{EnsureOptions, Progress, Rootfs, Store};

use crate::fixture::{Matrix, alive, cgroup_of, keyed, matrix, read, wait_until};

const MIB: u64 = 1 << 20;
/// Emulated VMs are slow: generous per-cell time.
const CELL: Duration = Duration::from_secs(120);

/// `DSBOX_MATRIX_STORE`: the rootfs store holding `minimal` (run-in-vm.sh builds it on
/// the host, where the network is; the VM sees it read-only).
const STORE_ENV: &str = "DSBOX_MATRIX_STORE";

/// The `minimal` rootfs (Python only: the kernel needs nothing else).
fn matrix_rootfs(m: &Matrix) -> Rootfs {
    let store = std::env::var_os(STORE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test> -> target/dsbox-kernel-matrix/store
            let exe = std::env::current_exe().unwrap();
            exe.ancestors()
                .nth(3)
                .unwrap()
                .join("dsbox-kernel-matrix/store")
        });
    let store = Store::new(&store);
    if let Ok(rootfs) = dsbox_rootfs::open(&store, "minimal") {
        return rootfs;
    }
    assert!(
        !m.required,
        "no `minimal` rootfs in {} ({STORE_ENV}): run-in-vm.sh builds it on the host",
        store.root().display()
    );
    let mut opts = EnsureOptions::new(store);
    opts.profiles_dir = None;
    dsbox_rootfs::ensure("minimal", &opts, &Progress::hidden()).expect("build `minimal`")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn cell(sb: &mut SandboxKernel, code: &str) -> CellResult {
    sb.execute(code, CELL).await.expect("execute a cell")
}

fn template(m: &Matrix) -> Template {
    let mut c = TemplateConfig::new(&matrix_rootfs(m));
    c.pool_size = 0;
    c.limits.memory = Some(128 * MIB);
    c.limits.pids = Some(32);
    c.zygote_start_timeout = Duration::from_secs(120);
    c.client.interrupt_grace = Duration::from_secs(5);
    c.client.hello_timeout = Duration::from_secs(60);
    KernelManager::new(ManagerConfig::default())
        .template(c)
        .expect("a template")
}

#[test]
fn the_zygote_children_each_land_in_their_own_v2_cgroup_with_their_own_limits() {
    let Some(m) = matrix() else { return };
    block_on(async {
        let t = template(m);
        let state = t.wait_ready().await.expect("the zygote starts");
        assert!(matches!(state, ZygoteState::Up { .. }), "{state:?}");
        let zygote = t.zygote_pid().unwrap();
        let zygote_cg = cgroup_of(&zygote.to_string()).unwrap();
        assert_eq!(
            zygote_cg.parent(),
            Some(m.own.join("dsbox").as_path()),
            "the zygote is a sandbox of its own below the runtime's cgroup"
        );
        let mut kernels = Vec::new();
        for _ in 0..3 {
            kernels.push(
                t.acquire(AcquireOptions::default())
                    .await
                    .expect("acquire a kernel"),
            );
        }
        let mut leaves = Vec::new();
        for k in kernels.iter_mut() {
            let paths = k.cgroup_paths();
            assert_eq!(paths.len(), 1, "one v2 leaf: {paths:?}");
            let leaf = paths[0].clone();
            assert_eq!(leaf.parent(), Some(m.sandbox_parent_dir().as_path()));
            let pid = k.kernel_pid().expect("a live kernel");
            let cg = cgroup_of(&pid.to_string()).unwrap();
            assert_eq!(
                m.dir(&cg),
                leaf,
                "kernel {pid} must live in its shell's leaf, not the zygote's"
            );
            assert_eq!(read(&leaf, "memory.max"), (128 * MIB).to_string());
            assert_eq!(read(&leaf, "pids.max"), "32");
            // From inside, the cgroup namespace is rooted at the kernel's own leaf.
            let c = cell(k, "print(open('/proc/self/cgroup').read().strip())").await;
            assert_eq!(c.stdout().trim(), "0::/", "{c:?}");
            leaves.push(leaf);
        }
        leaves.sort();
        leaves.dedup();
        assert_eq!(leaves.len(), 3, "each kernel has a leaf of its own");
        // The children left the zygote's cgroup: it holds the zygote alone.
        assert_eq!(read(&m.dir(&zygote_cg), "cgroup.procs"), zygote.to_string());

        // An OOM is the kernel's own: its leaf counts it, its siblings keep their state.
        let [a, b, c] = &mut kernels[..] else {
            unreachable!()
        };
        cell(b, "y = 'sibling'").await;
        let r = cell(
            a,
            "hog = bytearray(512 << 20)\nhog[::4096] = b'x' * (len(hog) // 4096)",
        )
        .await;
        let (name, value, _) = r.error().expect("an error item");
        assert_eq!(name, "DeadKernelError", "{r:?}");
        assert!(value.contains("OOM killer"), "{value}");
        assert!(keyed(&leaves_of(a), "memory.events", "oom_kill").unwrap() >= 1);
        assert_eq!(keyed(&leaves_of(b), "memory.events", "oom_kill"), Some(0));
        assert_eq!(cell(b, "y").await.result_text(), Some("'sibling'"));

        // A fork bomb stops at the kernel's own pids limit.
        let r = cell(
            c,
            "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)",
        )
        .await;
        let out = r.stdout();
        let (forks, errno) = out.trim().split_once(' ').expect("forks and errno");
        assert_eq!(errno, "11", "EAGAIN at the pids limit: {r:?}");
        assert!(forks.parse::<u32>().unwrap() < 32, "{out}");
        assert!(keyed(&leaves_of(c), "pids.events", "max").unwrap() >= 1);
        assert_eq!(cell(b, "1 + 1").await.result_text(), Some("2"));

        // Killing the zygote (its own leaf) takes no kernel along; it is restarted.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(zygote),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(10), || !alive(zygote)));
        assert_eq!(
            cell(b, "y").await.result_text(),
            Some("'sibling'"),
            "the kernel outlives its zygote"
        );
        let mut d = t.acquire(AcquireOptions::default()).await.expect("acquire");
        assert_eq!(cell(&mut d, "1 + 1").await.result_text(), Some("2"));
        let new_zygote = t.zygote_pid().unwrap();
        assert_ne!(new_zygote, zygote);
        let d_leaf = leaves_of(&d);
        assert_eq!(
            m.dir(&cgroup_of(&d.kernel_pid().unwrap().to_string()).unwrap()),
            d_leaf
        );

        // Closing leaves nothing: leaves, kernels, inits.
        kernels.push(d);
        let mut pids = Vec::new();
        let mut all_leaves = Vec::new();
        for k in kernels {
            pids.extend(k.kernel_pid().map(|p| p as i32));
            pids.push(k.init_pid());
            all_leaves.extend(k.cgroup_paths());
            k.close().await.expect("close");
        }
        for leaf in &all_leaves {
            assert!(!leaf.exists(), "{} was left behind", leaf.display());
        }
        for pid in pids {
            assert!(
                wait_until(Duration::from_secs(5), || !alive(pid)),
                "{pid} was left behind"
            );
        }
    });
}

fn leaves_of(k: &SandboxKernel) -> PathBuf {
    k.cgroup_paths().remove(0)
}
