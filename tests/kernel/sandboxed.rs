//! Sandboxed, pooled kernels end to end, as root: the zygote in its own sandbox, kernels
//! forked from it joining real shell sandboxes (`dsbox-runtime` shell mode), data
//! attached at acquire time, the warm pool, the caps, and every protection of the
//! runtime holding for a joined kernel. One tokio runtime and one manager for the whole
//! test binary (templates with the same settings share one zygote).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use dsbox_kernel::{
    AcquireOptions, CellResult, CellStatus, DataMount, KernelManager, ManagerConfig, OutputItem,
    SandboxError, SandboxKernel, Template, TemplateConfig, ZygoteState,
};

use crate::{CELL, is_root, test_rootfs};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: sandboxed kernels need root");
            return;
        }
    };
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

fn manager() -> &'static KernelManager {
    static M: OnceLock<KernelManager> = OnceLock::new();
    M.get_or_init(|| KernelManager::new(ManagerConfig::default()))
}

fn config() -> TemplateConfig {
    let mut c = TemplateConfig::new(&test_rootfs());
    c.pool_size = 1;
    c.client.interrupt_grace = Duration::from_secs(2);
    c
}

/// The template most tests share (one zygote for the binary).
fn shared() -> Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let _guard = rt().enter();
        manager().template(config()).expect("the shared template")
    })
    .clone()
}

async fn acquire(t: &Template, options: AcquireOptions) -> SandboxKernel {
    t.acquire(options)
        .await
        .expect("acquire a sandboxed kernel")
}

async fn cell(sb: &mut SandboxKernel, code: &str) -> CellResult {
    sb.execute(code, CELL).await.expect("execute")
}

fn has_ansi(s: &str) -> bool {
    s.contains('\u{1b}')
}

#[test]
fn a_sandboxed_kernel_keeps_state_and_returns_jupyter_shaped_items() {
    require_root!();
    block_on(async {
        let mut sb = acquire(&shared(), AcquireOptions::default()).await;
        assert_eq!(cell(&mut sb, "x = 20").await.status, CellStatus::Ok);
        assert_eq!(cell(&mut sb, "x * 2 + 2").await.result_text(), Some("42"));

        let c = cell(
            &mut sb,
            "import sys, os\nprint('a')\nprint('b', file=sys.stderr)\nos.write(1, b'c-from-fd\\n')\nprint('d')",
        )
        .await;
        let streams: Vec<(String, String)> = c
            .items
            .iter()
            .filter_map(|i| match i {
                OutputItem::Stream { name, text } => Some((name.as_str().to_owned(), text.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(c.stdout(), "a\nc-from-fd\nd\n", "{c:?}");
        assert_eq!(c.stderr(), "b\n");
        assert_eq!(streams.first().map(|s| s.0.as_str()), Some("stdout"));
        assert_eq!(
            streams.iter().map(|s| s.0.as_str()).collect::<Vec<_>>()[..2],
            ["stdout", "stderr"],
            "print order across streams: {streams:?}"
        );

        let c = cell(
            &mut sb,
            "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})\ndf",
        )
        .await;
        let data = match c
            .items
            .iter()
            .find(|i| matches!(i, OutputItem::Result { .. }))
        {
            Some(OutputItem::Result { data }) => data.clone(),
            other => panic!("no result: {other:?} in {c:?}"),
        };
        assert!(
            data.contains_key("text/plain") && data.contains_key("text/html"),
            "{data:?}"
        );
        assert!(data["text/html"].contains("<table"));

        let c = cell(
            &mut sb,
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()",
        )
        .await;
        let png = c
            .items
            .iter()
            .find_map(|i| i.image_png())
            .expect("a figure as image/png")
            .expect("valid base64");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

        let c = cell(&mut sb, "def f():\n    return 1 / 0\nf()").await;
        assert_eq!(c.status, CellStatus::Error);
        let (name, value, tb) = c.error().expect("an error item");
        assert_eq!((name, value), ("ZeroDivisionError", "division by zero"));
        assert!(tb.iter().any(|l| l.contains("1 / 0")), "{tb:?}");
        assert!(!tb.iter().any(|l| has_ansi(l)), "no ANSI codes: {tb:?}");
        assert_eq!(
            cell(&mut sb, "x").await.result_text(),
            Some("20"),
            "state survives an error"
        );
        sb.close().await.expect("close");
    });
}

#[test]
fn a_timeout_interrupts_the_cell_and_keeps_the_state() {
    require_root!();
    block_on(async {
        let mut sb = acquire(&shared(), AcquireOptions::default()).await;
        cell(&mut sb, "x = 'kept'").await;
        let c = sb
            .execute("import time\ntime.sleep(60)", Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(c.status, CellStatus::TimedOut, "{c:?}");
        let (name, value, _) = c.error().unwrap();
        assert_eq!(name, "TimeoutError");
        assert!(value.contains("state is kept"), "{value}");
        assert_eq!(cell(&mut sb, "x").await.result_text(), Some("'kept'"));
        assert_eq!(sb.restarts(), 0);
        sb.close().await.unwrap();
    });
}

#[test]
fn a_cell_that_ignores_sigint_is_killed_reported_and_its_kernel_replaced_in_the_same_sandbox() {
    require_root!();
    block_on(async {
        let mut sb = acquire(&shared(), AcquireOptions::default()).await;
        cell(
            &mut sb,
            "x = 1\nopen('/workdir/kept.txt', 'w').write('file survives')",
        )
        .await;
        let before = sb.kernel_pid();
        let c = sb
            .execute(
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert!(matches!(c.status, CellStatus::KernelLost(_)), "{c:?}");
        let (name, value, _) = c.error().unwrap();
        assert_eq!(name, "TimeoutError");
        assert!(
            value.contains("restarted") && value.contains("variables are lost"),
            "{value}"
        );
        assert_eq!(sb.restarts(), 1);
        assert_ne!(sb.kernel_pid(), before, "a new kernel process");
        let c = cell(&mut sb, "open('/workdir/kept.txt').read()").await;
        assert_eq!(c.result_text(), Some("'file survives'"), "{c:?}");
        let c = cell(&mut sb, "x").await;
        assert_eq!(
            c.error().map(|e| e.0),
            Some("NameError"),
            "state was lost: {c:?}"
        );
        sb.close().await.unwrap();
    });
}

#[test]
fn os_exit_and_a_segfault_give_a_clear_error_and_the_next_cell_and_acquire_work() {
    require_root!();
    block_on(async {
        let t = shared();
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        let c = cell(&mut sb, "import os\nos._exit(1)").await;
        let (name, value, _) = c.error().expect("an error item");
        assert_eq!(name, "DeadKernelError");
        assert!(
            value.contains("exited with code 1") && value.contains("restarted"),
            "{value}"
        );
        assert_eq!(cell(&mut sb, "1 + 1").await.result_text(), Some("2"));

        let c = cell(&mut sb, "import ctypes\nctypes.string_at(0)").await;
        let (name, value, _) = c.error().expect("an error item");
        assert_eq!(name, "DeadKernelError");
        assert!(value.contains("signal 11 (SIGSEGV)"), "{value}");
        assert_eq!(cell(&mut sb, "2 + 2").await.result_text(), Some("4"));
        assert_eq!(sb.restarts(), 2);
        sb.close().await.unwrap();

        let mut next = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(cell(&mut next, "3 + 3").await.result_text(), Some("6"));
        next.close().await.unwrap();
    });
}

/// Host pid of the kernel in `sb`.
fn host_pid(sb: &SandboxKernel) -> u32 {
    sb.kernel_pid().expect("a kernel")
}

#[test]
fn two_kernels_cannot_see_each_others_files_processes_or_memory() {
    require_root!();
    block_on(async {
        let t = shared();
        let mut a = acquire(&t, AcquireOptions::default()).await;
        let mut b = acquire(&t, AcquireOptions::default()).await;
        cell(
            &mut a,
            "import os\nfor p in ('/tmp/secret-a', '/workdir/secret-a', '/dev/shm/secret-a'):\n    open(p, 'w').write('a')\nsecret = bytearray(b'A-SECRET-' * 1000)\nimport ctypes\naddr = ctypes.addressof((ctypes.c_char * len(secret)).from_buffer(secret))",
        )
        .await;
        let addr = cell(&mut a, "addr").await.result_text().unwrap().to_owned();
        let a_pid = host_pid(&a);
        let zygote_pid = t.zygote_pid().expect("the zygote is up");

        let c = cell(
            &mut b,
            "import os\n[p for p in ('/tmp/secret-a', '/workdir/secret-a', '/dev/shm/secret-a') if os.path.exists(p)]",
        )
        .await;
        assert_eq!(
            c.result_text(),
            Some("[]"),
            "files of A are invisible to B: {c:?}"
        );

        let c = cell(
            &mut b,
            "sorted(int(d) for d in os.listdir('/proc') if d.isdigit())",
        )
        .await;
        let pids = c.result_text().unwrap().to_owned();
        assert!(
            !pids.contains(&a_pid.to_string()),
            "A's pid {a_pid} in B's /proc: {pids}"
        );
        assert!(
            pids.matches(',').count() <= 2,
            "only B's init and kernel: {pids}"
        );

        let code = format!(
            "import os, errno, ctypes\nr = {{}}\ntry:\n    os.kill({a_pid}, 0)\n    r['kill'] = 'ok'\nexcept OSError as e:\n    r['kill'] = errno.errorcode[e.errno]\ntry:\n    os.kill({zygote_pid}, 0)\n    r['kill_zygote'] = 'ok'\nexcept OSError as e:\n    r['kill_zygote'] = errno.errorcode[e.errno]\nr['zygote_in_proc'] = os.path.exists('/proc/{zygote_pid}')\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\nlibc = ctypes.CDLL(None, use_errno=True)\nclass iovec(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\nbuf = ctypes.create_string_buffer(64)\nlocal = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)\nremote = iovec({addr}, 64)\nn = libc.process_vm_readv({a_pid}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\nr['process_vm_readv'] = errno.errorcode[ctypes.get_errno()] if n < 0 else buf.raw\nn = libc.ptrace(16, {a_pid}, 0, 0)\nr['ptrace'] = errno.errorcode[ctypes.get_errno()] if n < 0 else 'attached'\ntry:\n    open('/proc/{a_pid}/mem', 'rb')\n    r['mem'] = 'ok'\nexcept OSError as e:\n    r['mem'] = errno.errorcode[e.errno]\nr"
        );
        let c = cell(&mut b, &code).await;
        let r = c.result_text().unwrap_or_default().to_owned();
        assert!(r.contains("'kill': 'ESRCH'"), "{c:?}");
        assert!(
            r.contains("'kill_zygote': 'ESRCH'"),
            "the zygote is out of reach: {r}"
        );
        assert!(r.contains("'zygote_in_proc': False"), "{r}");
        assert!(r.contains("'process_vm_readv': 'EPERM'"), "{r}");
        assert!(r.contains("'ptrace': 'EPERM'"), "{r}");
        assert!(r.contains("'mem': 'ENOENT'"), "{r}");
        assert!(!r.contains("A-SECRET"), "{r}");
        // A survived B's kill(-1, SIGKILL) and kept its memory.
        let c = cell(&mut a, "bytes(secret[:9])").await;
        assert_eq!(c.result_text(), Some("b'A-SECRET-'"), "{c:?}");
        assert_eq!(a.restarts(), 0);
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn children_of_one_zygote_draw_different_random_numbers() {
    require_root!();
    block_on(async {
        let t = shared();
        let draw = "import random, numpy\n(random.random(), float(numpy.random.rand()))";
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut sb = acquire(&t, AcquireOptions::default()).await;
            seen.push(cell(&mut sb, draw).await.result_text().unwrap().to_owned());
            sb.close().await.unwrap();
        }
        let randoms: Vec<&str> = seen.iter().map(|s| s.split(',').next().unwrap()).collect();
        let nps: Vec<&str> = seen.iter().map(|s| s.split(',').nth(1).unwrap()).collect();
        for i in 0..seen.len() {
            for j in i + 1..seen.len() {
                assert_ne!(randoms[i], randoms[j], "random: {seen:?}");
                assert_ne!(nps[i], nps[j], "numpy: {seen:?}");
            }
        }
    });
}

#[test]
fn an_oom_in_one_kernel_leaves_its_sibling_and_the_zygote_alive() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.limits.memory = Some(256 << 20);
        c.pool_size = 0;
        let t = manager().template(c).unwrap();
        let mut a = acquire(&t, AcquireOptions::default()).await;
        let mut b = acquire(&t, AcquireOptions::default()).await;
        cell(&mut b, "y = 'sibling'").await;
        let r = cell(
            &mut a,
            "hog = bytearray(1 << 30)\nhog[::4096] = b'x' * (len(hog) // 4096)",
        )
        .await;
        let (name, value, _) = r.error().expect("an error item");
        assert_eq!(name, "DeadKernelError", "{r:?}");
        assert!(
            value.contains("OOM killer") && value.contains("256 MiB"),
            "{value}"
        );
        assert_eq!(cell(&mut b, "y").await.result_text(), Some("'sibling'"));
        assert!(t.zygote_children().await.is_ok(), "the zygote answers");
        assert_eq!(
            cell(&mut a, "1 + 1").await.result_text(),
            Some("2"),
            "A's replacement works"
        );
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn a_joined_kernel_has_every_protection_of_the_runtime() {
    require_root!();
    // A secret in the runtime's environment and a listener on the host's loopback.
    // SAFETY: set before any sandbox of this test starts; the tests only read it.
    unsafe { std::env::set_var("DSBOX_TEST_SECRET_KEY", "sk-must-not-leak") };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let leaked = std::fs::File::open("/etc/hostname").unwrap();
    let _ = &leaked;
    block_on(async {
        let mut sb = acquire(&shared(), AcquireOptions::default()).await;
        let code = format!(
            r#"import os, socket, errno, ctypes
r = {{}}
st = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
r['ids'] = (os.getuid(), os.getgid(), os.getgroups())
r['caps'] = [st[k].strip() for k in ('CapEff', 'CapPrm', 'CapInh', 'CapBnd', 'CapAmb')]
r['nnp'] = st['NoNewPrivs'].strip()
r['seccomp'] = st['Seccomp'].strip()
r['secret'] = 'DSBOX_TEST_SECRET_KEY' in os.environ
r['env'] = sorted(os.environ)
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', {port}))
    r['net'] = 'connected'
except OSError as e:
    r['net'] = errno.errorcode.get(e.errno, str(e))
r['ifaces'] = sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:])
fds = {{}}
for fd in os.listdir('/proc/self/fd'):
    try:
        fds[int(fd)] = os.readlink('/proc/self/fd/' + fd)
    except OSError:
        pass
r['fds'] = sorted(set(v.split(':')[0] for v in fds.values()))
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    rc = libc.syscall(nr, *a)
    return errno.errorcode[ctypes.get_errno()] if rc < 0 else rc
r['mount'] = sc(165, b'none', b'/tmp', b'tmpfs', 0, None)
r['ptrace'] = sc(101, 16, 1, 0, 0)
r['bpf'] = sc(321, 0, None, 0)
for p in ('/usr/dsbox-test', '/opt/dsbox/env/dsbox-test', '/dsbox-test'):
    try:
        open(p, 'w')
        r[p] = 'written'
    except OSError as e:
        r[p] = errno.errorcode[e.errno]
r['hostname'] = socket.gethostname()
import json
print(json.dumps(r))"#
        );
        let c = cell(&mut sb, &code).await;
        let r: serde_json::Value =
            serde_json::from_str(c.stdout().trim()).unwrap_or_else(|e| panic!("{e}: {c:?}"));
        let zero = "0000000000000000";
        assert_eq!(r["ids"], serde_json::json!([1000, 1000, []]), "{r}");
        assert_eq!(
            r["caps"],
            serde_json::json!([zero, zero, zero, zero, zero]),
            "{r}"
        );
        assert_eq!(r["nnp"], "1");
        assert_eq!(r["seccomp"], "2");
        assert_eq!(
            r["secret"], false,
            "the runtime's environment does not leak: {r}"
        );
        assert_eq!(
            r["env"],
            serde_json::json!(["HOME", "LANG", "MPLBACKEND", "PATH"]),
            "{r}"
        );
        assert_eq!(r["ifaces"], serde_json::json!(["lo"]));
        assert!(
            r["net"] == "ECONNREFUSED" || r["net"] == "ENETUNREACH",
            "{r}"
        );
        for call in ["mount", "ptrace", "bpf"] {
            assert_eq!(r[call], "EPERM", "{call}: {r}");
        }
        assert_eq!(r["hostname"], "dsbox");
        // Only the kernel's own pipes, its channel and /dev/null: nothing of the runtime.
        assert_eq!(
            r["fds"],
            serde_json::json!(["/dev/null", "pipe", "socket"]),
            "{r}"
        );
        for p in [
            "/usr/dsbox-test",
            "/opt/dsbox/env/dsbox-test",
            "/dsbox-test",
        ] {
            assert!(
                r[p] == "EROFS" || r[p] == "EACCES",
                "{p} must not be writable: {r}"
            );
        }
        sb.close().await.unwrap();
    });
    drop(listener);
}

/// A host directory with task files, removed on drop.
fn task_dir(tag: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("dsbox-task-{tag}-"))
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("train.csv"), format!("a,b\n1,{tag}\n")).unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::write(dir.path().join("more/notes.txt"), tag).unwrap();
    dir
}

#[test]
fn task_data_attached_at_acquire_is_readable_read_only_and_private() {
    require_root!();
    let one = task_dir("one");
    let two = task_dir("two");
    block_on(async {
        let t = shared();
        // The shared template keeps a warm pool: this attaches to a pooled sandbox.
        t.wait_pool(1, Duration::from_secs(120)).await;
        let opts = |d: &Path| AcquireOptions {
            data: vec![
                DataMount::new(d.join("train.csv"), "/data/train.csv"),
                DataMount::new(d.join("more"), "/data/extra/more"),
            ],
            ..AcquireOptions::default()
        };
        let mut a = acquire(&t, opts(one.path())).await;
        let mut b = acquire(&t, opts(two.path())).await;
        assert!(a.acquire_timings().pool_hit, "the first came from the pool");
        let c = cell(
            &mut a,
            "import pandas as pd, os\n(pd.read_csv('/data/train.csv').b[0], open('/data/extra/more/notes.txt').read(), sorted(os.listdir('/data')))",
        )
        .await;
        assert_eq!(
            c.result_text(),
            Some("('one', 'one', ['extra', 'train.csv'])"),
            "{c:?}"
        );
        let c = cell(
            &mut b,
            "(open('/data/train.csv').read(), open('/data/extra/more/notes.txt').read())",
        )
        .await;
        assert_eq!(
            c.result_text(),
            Some("('a,b\\n1,two\\n', 'two')"),
            "B sees only its own data: {c:?}"
        );
        let c = cell(
            &mut a,
            "import errno\nr = []\nfor p, m in (('/data/train.csv', 'a'), ('/data/new.csv', 'w'), ('/data/extra/more/x', 'w'), ('/data/extra/more/notes.txt', 'w')):\n    try:\n        open(p, m)\n        r.append('written')\n    except OSError as e:\n        r.append(errno.errorcode[e.errno])\nr",
        )
        .await;
        let r = c.result_text().unwrap().to_owned();
        assert!(
            !r.contains("written"),
            "nothing under /data is writable: {r}"
        );
        assert_eq!(
            std::fs::read_to_string(one.path().join("train.csv")).unwrap(),
            "a,b\n1,one\n",
            "the host file is unchanged"
        );
        a.close().await.unwrap();
        b.close().await.unwrap();

        let err = t
            .acquire(AcquireOptions {
                data: vec![DataMount::new(
                    one.path().join("train.csv"),
                    "/etc/train.csv",
                )],
                ..AcquireOptions::default()
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("below /data"), "{err}");
        let err = t
            .acquire(AcquireOptions {
                data: vec![DataMount::new("/nonexistent/dsbox/x.csv", "/data/x.csv")],
                ..AcquireOptions::default()
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    });
}

#[test]
fn submission_is_writable_only_when_asked_for() {
    require_root!();
    block_on(async {
        let t = shared();
        let write = "import errno\ntry:\n    open('/submission/answer.csv', 'w').write('x')\n    r = 'written'\nexcept OSError as e:\n    r = errno.errorcode[e.errno]\nr";
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(cell(&mut sb, write).await.result_text(), Some("'EROFS'"));
        sb.close().await.unwrap();
        let mut sb = acquire(
            &t,
            AcquireOptions {
                writable_submission: true,
                ..AcquireOptions::default()
            },
        )
        .await;
        assert_eq!(cell(&mut sb, write).await.result_text(), Some("'written'"));
        let got = sb
            .download("/submission/answer.csv", 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, b"x");
        sb.close().await.unwrap();
    });
}

#[test]
fn upload_and_download_stay_inside_the_scratch_dirs() {
    require_root!();
    block_on(async {
        let mut sb = acquire(&shared(), AcquireOptions::default()).await;
        sb.upload("/workdir/in/deep/data.txt", b"hello")
            .await
            .unwrap();
        let c = cell(
            &mut sb,
            "import os\nst = os.stat('/workdir/in/deep/data.txt')\n(open('/workdir/in/deep/data.txt').read(), st.st_uid, os.stat('/workdir/in').st_uid)",
        )
        .await;
        assert_eq!(c.result_text(), Some("('hello', 1000, 1000)"), "{c:?}");
        cell(
            &mut sb,
            "open('/tmp/out.bin', 'wb').write(bytes(range(256)))\nimport os\nos.symlink('/etc/hostname', '/workdir/evil')\nos.symlink('/proc/sys/kernel', '/workdir/sys')\nos.symlink('/', '/workdir/root')\nos.mkfifo('/workdir/fifo')",
        )
        .await;
        assert_eq!(
            sb.download("/tmp/out.bin", 1 << 20).await.unwrap(),
            (0..=255u8).collect::<Vec<_>>()
        );
        let host_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        // A symlink as the last component is refused; one in the middle resolves inside
        // the scratch dir (as if it were `/`), never on the host or elsewhere inside.
        for (path, data) in [
            ("/workdir/evil", b"x".as_slice()),
            ("/workdir/sys/hostname", b"pwned".as_slice()),
        ] {
            assert!(
                sb.upload(path, data).await.is_err(),
                "upload to {path} must fail"
            );
        }
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
            host_hostname
        );
        sb.upload("/workdir/root/etc/passwd", b"pwned")
            .await
            .unwrap();
        let c = cell(
            &mut sb,
            "(open('/workdir/etc/passwd').read(), 'pwned' in open('/etc/passwd').read())",
        )
        .await;
        assert_eq!(c.result_text(), Some("('pwned', False)"), "{c:?}");
        assert!(
            sb.download("/workdir/root/etc/shadow", 1 << 20)
                .await
                .is_err()
        );
        assert!(
            sb.download("/workdir/root/etc/hostname", 1 << 20)
                .await
                .is_err()
        );
        let err = sb.download("/workdir/fifo", 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = sb.download("/tmp/out.bin", 10).await.unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
        for bad in [
            "/etc/passwd",
            "/workdir/../etc/passwd",
            "relative.txt",
            "/data/x",
        ] {
            let err = sb.upload(bad, b"x").await.unwrap_err();
            assert!(matches!(err, SandboxError::File(_)), "{bad}: {err}");
        }
        sb.close().await.unwrap();
    });
}

#[test]
fn the_warm_pool_hands_out_ready_kernels_and_refills() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 2;
        c.limits.pids = Some(255); // a template of its own (different policy)
        let t = manager().template(c).unwrap();
        assert!(
            t.wait_pool(2, Duration::from_secs(120)).await,
            "{:?}",
            t.stats()
        );
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        let timings = sb.acquire_timings().clone();
        assert!(timings.pool_hit);
        assert!(
            timings.total() < timings.kernel.total(),
            "taking is faster than making: {timings:?}"
        );
        assert_eq!(cell(&mut sb, "1 + 1").await.result_text(), Some("2"));
        assert!(
            t.wait_pool(2, Duration::from_secs(120)).await,
            "refilled: {:?}",
            t.stats()
        );
        let stats = t.stats();
        assert_eq!((stats.pool_hits, stats.pool_ready), (1, 2), "{stats:?}");
        sb.close().await.unwrap();
        t.drain_pool();
        assert_eq!(t.stats().pool_ready, 0);
    });
}

#[test]
fn kernel_timestamps_follow_the_steps_in_order() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        let t = manager().template(c).unwrap();
        let sb = acquire(&t, AcquireOptions::default()).await;
        let a = sb.acquire_timings().clone();
        let k = &a.kernel;
        assert!(!a.pool_hit);
        let shell = k.shell_ready_ns.unwrap();
        let forked = k.forked_ns.unwrap();
        let joined = k.joined_ns.unwrap();
        let kernel_ready = k.kernel_ready_ns.unwrap();
        // The fork was asked for while the shell was still starting (it overlaps the
        // shell's start; the zygote may send it later: the first request waits for the
        // zygote to start), and the child joined only after the go byte, which went out
        // once the shell was ready.
        let go_sent = k.go_sent_ns.expect("the kernel was asked for early");
        let step = |name: &str| {
            k.join_steps
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("no join step {name}: {k:?}"))
        };
        assert!(
            shell <= go_sent
                && go_sent <= step("go")
                && step("go") <= step("cgroup")
                && step("cgroup") <= step("setns"),
            "asked early, joined after go: {a:?}"
        );
        assert!(
            a.request_ns <= k.spawn_sent_ns
                && k.spawn_sent_ns <= forked
                && forked <= joined
                && joined <= kernel_ready
                && kernel_ready <= k.ready_ns
                && k.ready_ns <= a.acquired_ns,
            "{a:?}"
        );
        let steps: Vec<&str> = k.join_steps.iter().map(|(s, _)| s.as_str()).collect();
        for s in ["cgroup", "setns", "landlock", "seccomp", "reader_thread"] {
            assert!(steps.contains(&s), "{steps:?}");
        }
        sb.close().await.unwrap();
    });
}

#[test]
fn the_runtime_tells_a_joiner_about_a_shell_once_while_it_starts() {
    require_root!();
    use dsbox_runtime::process::message::monotonic_ns;
    use dsbox_runtime::{Sandbox, SpawnOptions};
    let spec = config().shell_spec();
    let mut seen = Vec::new();
    let shell = Sandbox::spawn_with_hook(&spec, SpawnOptions::default(), &mut |j| {
        let procs_open = j
            .cgroup_procs
            .iter()
            .all(|fd| fd.try_clone_to_owned().is_ok());
        seen.push((
            monotonic_ns(),
            j.init_pid,
            j.plan.clone(),
            j.cgroup_paths.clone(),
            j.cgroup_procs.len(),
            procs_open,
        ));
    })
    .expect("a shell");
    assert_eq!(seen.len(), 1, "the hook runs once");
    // (Usually before init's `Ready` arrived; not always: the middle process that
    // reports init's pid may be descheduled until after init is ready.)
    let (at, init_pid, plan, paths, procs, procs_open) = seen.pop().unwrap();
    assert!(at >= shell.timings().request_ns, "during the spawn");
    assert_eq!(init_pid, shell.pid());
    let join = shell.join_plan();
    assert_eq!(plan, join.plan, "the plan join_plan() gives");
    assert_eq!(paths, shell.cgroup_paths());
    assert!(!paths.is_empty(), "shells have a cgroup (limits)");
    assert_eq!(procs, join.cgroup_procs.len());
    assert!(procs_open, "the cgroup.procs fds were open during the hook");
    shell.destroy().unwrap();
}

#[test]
fn the_caps_on_live_sandboxes_refuse_with_a_clear_error_and_free_up_on_close() {
    require_root!();
    block_on(async {
        let m = KernelManager::new(ManagerConfig {
            max_sandboxes: 2,
            acquire_timeout: Duration::from_millis(300),
            ..ManagerConfig::default()
        });
        let mut c = config();
        c.pool_size = 0;
        let t = m.template(c).unwrap();
        let a = acquire(&t, AcquireOptions::default()).await;
        let b = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(m.live(), 2);
        let err = t.acquire(AcquireOptions::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                SandboxError::TooManySandboxes {
                    live: 2,
                    limit: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("max_sandboxes"), "{err}");
        a.close().await.unwrap();
        assert_eq!(m.live(), 1);
        let c = acquire(&t, AcquireOptions::default()).await;
        drop(c);
        b.close().await.unwrap();
        // Dropped, not closed: destroyed in the background.
        for _ in 0..100 {
            if m.live() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(m.live(), 0);

        let m = KernelManager::new(ManagerConfig {
            max_memory: Some(1),
            acquire_timeout: Duration::from_millis(200),
            ..ManagerConfig::default()
        });
        let mut c = config();
        c.pool_size = 0;
        let t = m.template(c).unwrap();
        let err = t.acquire(AcquireOptions::default()).await.unwrap_err();
        assert!(
            matches!(err, SandboxError::OutOfMemory { limit: 1, .. }),
            "{err}"
        );
    });
}

#[test]
fn a_dead_zygote_is_restarted_and_live_kernels_keep_working() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        c.limits.pids = Some(254); // its own template: this test kills its zygote
        let m = KernelManager::new(ManagerConfig::default());
        let t = m.template(c).unwrap();
        let mut a = acquire(&t, AcquireOptions::default()).await;
        cell(&mut a, "x = 'alive'").await;
        let pid = t.zygote_pid().expect("the zygote is up");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(
            cell(&mut a, "x").await.result_text(),
            Some("'alive'"),
            "the kernel outlives its zygote"
        );
        let mut b = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(m.live(), 2, "the restart lost no sandbox from the count");
        assert_eq!(cell(&mut b, "1 + 1").await.result_text(), Some("2"));
        let stats = t.stats();
        assert!(
            matches!(stats.zygote, ZygoteState::Up { restarts: 1, pid: p, .. } if p != pid),
            "{stats:?}"
        );
        // The kernel forked by the dead zygote can still be replaced after a crash.
        let r = cell(&mut a, "import os\nos._exit(3)").await;
        assert_eq!(r.error().map(|e| e.0), Some("DeadKernelError"));
        assert_eq!(cell(&mut a, "2 + 2").await.result_text(), Some("4"));
        a.close().await.unwrap();
        b.close().await.unwrap();
        assert_eq!(m.live(), 0);
    });
}

#[test]
fn idle_acquired_sandboxes_are_reclaimed() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        c.sandbox_idle = Some(Duration::from_millis(300));
        let t = manager().template(c).unwrap();
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(cell(&mut sb, "1").await.result_text(), Some("1"));
        let paths = sb.cgroup_paths();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let err = sb.execute("1", CELL).await.unwrap_err();
        assert!(matches!(err, SandboxError::Reclaimed { .. }), "{err}");
        assert!(err.to_string().contains("idle"), "{err}");
        for _ in 0..100 {
            if paths.iter().all(|p| !p.exists()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(paths.iter().all(|p| !p.exists()), "its cgroups are gone");
    });
}

fn state_file(id: &str) -> PathBuf {
    PathBuf::from(format!("/run/dsbox/sandboxes/{id}.json"))
}

#[test]
fn closed_sandboxes_leave_no_process_cgroup_or_state_record() {
    require_root!();
    block_on(async {
        let t = shared();
        for _ in 0..10 {
            let mut sb = acquire(&t, AcquireOptions::default()).await;
            cell(
                &mut sb,
                "import subprocess\nchild = subprocess.Popen(['sleep', '100'])",
            )
            .await;
            let (init, kernel, paths, id) = (
                sb.init_pid(),
                host_pid(&sb),
                sb.cgroup_paths(),
                sb.id().to_owned(),
            );
            assert!(state_file(&id).exists());
            sb.close().await.unwrap();
            assert!(
                !Path::new(&format!("/proc/{init}")).exists(),
                "init {init} is gone"
            );
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{kernel}")).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                !Path::new(&format!("/proc/{kernel}")).exists(),
                "kernel {kernel} is gone"
            );
            assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
            assert!(!state_file(&id).exists());
        }
    });
}

#[test]
fn the_zygote_preloads_the_modules_the_template_names() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        c.preload = [
            "pandas",
            "numpy",
            "sklearn",
            "scipy",
            "statsmodels",
            "matplotlib",
        ]
        .map(String::from)
        .to_vec();
        let t = manager().template(c).unwrap();
        match t.wait_ready().await.unwrap() {
            ZygoteState::Up {
                failed, preloaded, ..
            } => {
                assert!(failed.is_empty(), "{failed:?}");
                assert_eq!(preloaded.len(), 6);
            }
            other => panic!("{other:?}"),
        }
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        let c = cell(
            &mut sb,
            "import sys, os\n(all(m in sys.modules for m in ('sklearn', 'scipy', 'statsmodels', 'matplotlib.pyplot')), os.environ.get('OPENBLAS_NUM_THREADS'))",
        )
        .await;
        // Loaded before the fork; the BLAS thread pins were read at load time (the
        // kernel's own environment is the sandbox's, without them).
        assert_eq!(c.result_text(), Some("(True, None)"), "{c:?}");
        let c = cell(
            &mut sb,
            "import threadpoolctl\nmax(p['num_threads'] for p in threadpoolctl.threadpool_info())",
        )
        .await;
        assert_eq!(
            c.result_text(),
            Some("1"),
            "BLAS/OpenMP pools have one thread: {c:?}"
        );
        sb.close().await.unwrap();
    });
}

#[test]
fn many_tasks_use_their_own_sandboxes_at_once() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        c.limits.pids = Some(253); // a template of its own
        let m = KernelManager::new(ManagerConfig::default());
        let t = m.template(c).unwrap();
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let mut sb = t.acquire(AcquireOptions::default()).await.unwrap();
                    sb.execute(&format!("mine = {i}"), CELL).await.unwrap();
                    sb.upload("/workdir/who.txt", format!("{i}").as_bytes())
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                    let c = sb
                        .execute("(mine, open('/workdir/who.txt').read())", CELL)
                        .await
                        .unwrap();
                    sb.close().await.unwrap();
                    (i, c.result_text().map(str::to_owned))
                })
            })
            .collect();
        for task in tasks {
            let (i, got) = task.await.unwrap();
            assert_eq!(got, Some(format!("({i}, '{i}')")));
        }
        assert_eq!(m.live(), 0, "every permit was given back");
    });
}

#[test]
fn the_agent_loop_pooled_backend_runs_episodes_on_pooled_kernels() {
    require_root!();
    use dsbox_agent::sandbox::{
        BackendConfig, DataMount as AgentData, PooledFactory, SandboxFactory, SandboxRequest,
    };
    let dir = task_dir("agent");
    block_on(async {
        let m = KernelManager::new(ManagerConfig::default());
        let factory = PooledFactory::from_rootfs(
            &m,
            &test_rootfs(),
            &BackendConfig {
                pool_size: 1,
                ..BackendConfig::default()
            },
        )
        .unwrap();
        assert_eq!(factory.info().backend, "pooled");
        factory
            .template()
            .wait_pool(1, Duration::from_secs(120))
            .await;
        let request = SandboxRequest {
            label: "task-1#0".into(),
            data: vec![AgentData {
                sandbox_path: "/data/train.csv".into(),
                host: dir.path().join("train.csv"),
                kind: dsbox_tasks::task::DataKind::File,
            }],
            submission: true,
            missing: vec![],
        };
        let mut sb = factory.create(&request).await.unwrap();
        let c = sb
            .execute(
                "import pandas as pd\nint(pd.read_csv('/data/train.csv').a[0])",
                CELL,
            )
            .await
            .unwrap();
        assert_eq!(c.result_text(), Some("1"), "{c:?}");
        sb.upload("/workdir/x.txt", b"up").await.unwrap();
        let c = sb
            .execute(
                "open('/submission/a.csv', 'w').write(open('/workdir/x.txt').read())",
                CELL,
            )
            .await
            .unwrap();
        assert_eq!(c.result_text(), Some("2"), "{c:?}");
        assert_eq!(sb.download("/submission/a.csv", 100).await.unwrap(), b"up");
        // Outside the scratch dirs: read through the kernel.
        assert_eq!(
            sb.download("/data/train.csv", 100).await.unwrap(),
            b"a,b\n1,agent\n"
        );
        sb.close().await.unwrap();
        let err = factory
            .create(&SandboxRequest {
                label: "task-2#0".into(),
                data: vec![AgentData {
                    sandbox_path: "/etc/x.csv".into(),
                    host: dir.path().join("train.csv"),
                    kind: dsbox_tasks::task::DataKind::File,
                }],
                submission: false,
                missing: vec![],
            })
            .await
            .err()
            .expect("a data path outside /data is refused");
        assert!(
            err.to_string().contains("task-2#0") && err.to_string().contains("below /data"),
            "{err}"
        );
    });
}

#[test]
fn a_stuck_zygote_fails_an_acquire_with_a_clear_error_instead_of_hanging() {
    require_root!();
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        c.limits.pids = Some(252); // its own zygote: this test stops it
        c.client.hello_timeout = Duration::from_secs(2);
        let t = manager().template(c).unwrap();
        t.wait_ready().await.unwrap();
        let pid = nix::unistd::Pid::from_raw(t.zygote_pid().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let started = std::time::Instant::now();
        let err = t.acquire(AcquireOptions::default()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, SandboxError::ZygoteUnavailable { .. })
                && err.to_string().contains("did not answer"),
            "{err}"
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        let mut sb = acquire(&t, AcquireOptions::default()).await;
        assert_eq!(cell(&mut sb, "1 + 1").await.result_text(), Some("2"));
        sb.close().await.unwrap();
    });
}

#[test]
fn a_pooled_backend_whose_zygote_cannot_start_says_why_when_warmed() {
    require_root!();
    use dsbox_agent::sandbox::{PooledFactory, SandboxFactory};
    block_on(async {
        let mut c = config();
        c.pool_size = 0;
        // A template of its own (the key does not include the interpreter's path).
        c.limits.pids = Some(249);
        c.rootfs.python = "/opt/dsbox/env/bin/no-such-python".into();
        c.zygote_start_timeout = Duration::from_secs(20);
        let m = KernelManager::new(ManagerConfig::default());
        let factory = PooledFactory::new(m.template(c).unwrap());
        let started = std::time::Instant::now();
        let err = factory
            .warm(0, Duration::ZERO)
            .await
            .expect_err("a zygote that cannot start is an error");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let text = err.to_string();
        assert!(
            text.contains("cannot start a sandbox") && text.contains("no-such-python"),
            "{text}"
        );
        // A working template is warm once its zygote is up.
        let ok = PooledFactory::new(shared());
        assert!(ok.warm(0, Duration::ZERO).await.unwrap());
    });
}
