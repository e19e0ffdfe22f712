//! The cold sandbox backend: a real dsbox-runtime sandbox per episode with the kernel
//! program as payload, the task's data bound read-only, /submission only for prediction
//! tasks, kernels replaced when lost, sandboxes released.

use std::path::Path;
use std::time::Duration;

use dsbox_agent::sandbox::{SandboxFactory, SandboxRequest};
use dsbox_kernel::CellStatus;
use dsbox_tasks::task::{DataFile, DataKind};
use dsbox_tasks::{Task, Track};

use crate::{factory, scratch, starter_suite};

const CELL: Duration = Duration::from_secs(60);

fn cgroup_exists(id: &str) -> bool {
    // The runtime puts sandboxes under .../dsbox/<id> in each hierarchy.
    [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .iter()
    .any(|root| find_dir(Path::new(root), id, 6))
}

fn find_dir(dir: &Path, name: &str, depth: u32) -> bool {
    if depth == 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let p = e.path();
        p.is_dir() && (e.file_name() == name || find_dir(&p, name, depth - 1))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_keep_state_and_only_the_tasks_data_is_visible_read_only() {
    let dir = scratch();
    let suite = starter_suite(dir.path());
    let task = suite
        .tasks
        .iter()
        .find(|t| t.id == "starter/total-revenue")
        .expect("starter task");
    let factory = factory();
    // A secret in the runtime's environment must not reach the sandbox.
    // SAFETY: set before any sandbox starts; nothing else reads this variable.
    unsafe { std::env::set_var("DSBOX_TEST_SECRET", "leaked") };
    let request = SandboxRequest::for_task(task, 0);
    assert!(!request.submission, "analysis tasks get no /submission");
    let mut sb = factory.create(&request).await.expect("start a sandbox");
    let ids = factory.live();
    assert_eq!(ids.len(), 1, "one live sandbox: {ids:?}");
    assert!(cgroup_exists(&ids[0]), "the live sandbox has a cgroup");

    let c = sb
        .execute(
            "import pandas as pd\ndf = pd.read_csv('/data/starter/sales.csv')\nlen(df)",
            CELL,
        )
        .await
        .expect("execute");
    assert_eq!(c.status, CellStatus::Ok, "{:?}", c.items);
    assert_eq!(c.result_text(), Some("144"));
    // State is kept between cells.
    let c = sb
        .execute("round(float(df['revenue'].sum()), 2)", CELL)
        .await
        .expect("execute");
    assert_eq!(c.status, CellStatus::Ok, "{:?}", c.items);
    let total: f64 = c.result_text().unwrap().parse().unwrap();
    assert!(
        (total - task.answer_text().unwrap().parse::<f64>().unwrap()).abs() < 0.01,
        "{total}"
    );

    let probe = r#"
import os
res = {}
try:
    open('/data/starter/sales.csv', 'a').write('x')
    res['write'] = 'allowed'
except OSError as e:
    res['write'] = type(e).__name__
res['other_task_file'] = os.path.exists('/data/starter/visits.csv')
res['submission'] = os.path.exists('/submission')
res['secret'] = os.environ.get('DSBOX_TEST_SECRET')
res['host_checkout'] = os.path.exists('/work') or os.path.exists('/root/.cargo')
res['uid'] = os.getuid()
print(sorted(res.items()))
"#;
    let c = sb.execute(probe, CELL).await.expect("execute");
    let out = c.stdout();
    assert!(
        out.contains("('write', 'OSError')") || out.contains("('write', 'PermissionError')"),
        "{out}"
    );
    assert!(out.contains("('other_task_file', False)"), "{out}");
    assert!(out.contains("('submission', False)"), "{out}");
    assert!(out.contains("('secret', None)"), "{out}");
    assert!(out.contains("('host_checkout', False)"), "{out}");
    assert!(out.contains("('uid', 1000)"), "{out}");

    sb.close().await.expect("close");
    assert!(factory.live().is_empty(), "released");
    for id in ids {
        assert!(!cgroup_exists(&id), "cgroup of {id} removed");
        assert!(
            !Path::new(&format!("/run/dsbox/sandboxes/{id}.json")).exists(),
            "state record of {id} removed"
        );
    }
}

fn prediction_task(data: &Path) -> Task {
    Task {
        id: "custom/predict".into(),
        suite: "custom".into(),
        track: Track::Prediction,
        question: "predict".into(),
        context: String::new(),
        data: vec![DataFile {
            path: "/data/custom/train.csv".into(),
            host: Some(data.to_owned()),
            kind: DataKind::File,
        }],
        submission: Some("/submission/submission.csv".into()),
        answer: None,
        answer_guideline: None,
        metric: dsbox_tasks::MetricSpec::new("none"),
        metadata: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_tasks_get_a_writable_submission_and_files_move_both_ways() {
    let dir = scratch();
    let train = dir.path().join("train.csv");
    std::fs::write(&train, "a,b\n1,2\n").unwrap();
    let task = prediction_task(&train);
    let factory = factory();
    let request = SandboxRequest::for_task(&task, 0);
    assert!(request.submission);
    let mut sb = factory.create(&request).await.expect("start");
    let c = sb
        .execute(
            "import pandas as pd\nd = pd.read_csv('/data/custom/train.csv')\nd.assign(c=d.a+d.b).to_csv('/submission/submission.csv', index=False)",
            CELL,
        )
        .await
        .unwrap();
    assert_eq!(c.status, CellStatus::Ok, "{:?}", c.items);
    let got = sb
        .download("/submission/submission.csv", 1 << 20)
        .await
        .expect("download");
    assert_eq!(String::from_utf8(got).unwrap(), "a,b,c\n1,2,3\n");
    // A file larger than one transfer chunk, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    sb.upload("/workdir/in/big.bin", &big)
        .await
        .expect("upload");
    let back = sb
        .download("/workdir/in/big.bin", 1 << 20)
        .await
        .expect("download");
    assert_eq!(back, big);
    let err = sb.download("/workdir/in/big.bin", 1000).await.unwrap_err();
    assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");
    let err = sb.download("/nope.txt", 1000).await.unwrap_err();
    assert!(err.to_string().contains("FileNotFoundError"), "{err}");
    sb.close().await.unwrap();
    assert!(factory.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_kernel_is_replaced_and_a_timeout_keeps_state() {
    let dir = scratch();
    let suite = starter_suite(dir.path());
    let task = &suite.tasks[0];
    let factory = factory();
    let mut sb = factory
        .create(&SandboxRequest::for_task(task, 0))
        .await
        .unwrap();
    sb.execute("x = 41", CELL).await.unwrap();
    // Timeout: interrupted, state kept.
    let c = sb
        .execute("import time\ntime.sleep(30)", Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(c.status, CellStatus::TimedOut, "{:?}", c.items);
    let c = sb.execute("x + 1", CELL).await.unwrap();
    assert_eq!(c.result_text(), Some("42"));
    let before = factory.live();
    // The kernel dies: the error says how, the next cell runs in a fresh sandbox.
    let c = sb.execute("import os\nos._exit(7)", CELL).await.unwrap();
    assert!(c.needs_restart(), "{:?}", c.status);
    let (name, value, _) = c.error().expect("an error item");
    assert_eq!(name, "DeadKernelError");
    assert!(value.contains("code 7"), "{value}");
    let c = sb.execute("'x' in globals()", CELL).await.unwrap();
    assert_eq!(
        c.result_text(),
        Some("False"),
        "state is gone after a restart"
    );
    let after = factory.live();
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "a new sandbox replaced the old one");
    assert!(!cgroup_exists(&before[0]), "the dead sandbox was destroyed");
    sb.close().await.unwrap();
    assert!(factory.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_sandbox_without_close_still_releases_it() {
    let dir = scratch();
    let suite = starter_suite(dir.path());
    let factory = factory();
    let sb = factory
        .create(&SandboxRequest::for_task(&suite.tasks[0], 0))
        .await
        .unwrap();
    let ids = factory.live();
    drop(sb);
    assert!(factory.live().is_empty());
    assert!(!cgroup_exists(&ids[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_data_files_are_reported_not_mounted() {
    let dir = scratch();
    let mut task = prediction_task(&dir.path().join("absent.csv"));
    task.track = Track::Analysis;
    task.submission = None;
    let request = SandboxRequest::for_task(&task, 0);
    assert!(request.data.is_empty());
    assert_eq!(request.missing, vec!["/data/custom/train.csv".to_string()]);
    let factory = factory();
    let mut sb = factory
        .create(&request)
        .await
        .expect("starts without the file");
    let c = sb
        .execute("import os\nos.path.exists('/data/custom/train.csv')", CELL)
        .await
        .unwrap();
    assert_eq!(c.result_text(), Some("False"));
    sb.close().await.unwrap();
}
