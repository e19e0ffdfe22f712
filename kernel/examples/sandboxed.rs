//! Acquire sandboxed kernels from a rootfs in the store and print where their time went.
//!
//! ```text
//! cargo run --release -p dsbox-kernel --example sandboxed -- [--store DIR] [--rootfs analysis] [--count 20] [--pool 0]
//! ```

use std::time::Duration;

use dsbox_kernel::{AcquireOptions, KernelManager, ManagerConfig, TemplateConfig};
use dsbox_rootfs::{EnsureOptions, Progress, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut store = None;
    let mut name = "analysis".to_owned();
    let mut count = 20usize;
    let mut pool = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--store" => store = Some(std::path::PathBuf::from(val()?)),
            "--rootfs" => name = val()?,
            "--count" => count = val()?.parse()?,
            "--pool" => pool = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let opts = EnsureOptions::new(Store::locate(store.as_deref()));
    let rootfs = dsbox_rootfs::ensure(&name, &opts, &Progress::auto())?;
    let manager = KernelManager::new(ManagerConfig::default());
    let mut config = TemplateConfig::new(&rootfs);
    config.pool_size = pool;
    let template = manager.template(config)?;
    let state = template.wait_ready().await?;
    println!("zygote: {state:?}");
    if pool > 0 {
        template.wait_pool(pool, Duration::from_secs(60)).await;
    }
    for i in 0..count {
        let mut sb = template.acquire(AcquireOptions::default()).await?;
        let t = sb.acquire_timings().clone();
        let cell = sb.execute("1+1", Duration::from_secs(10)).await?;
        let mut steps: Vec<String> = t
            .kernel
            .steps_ms()
            .iter()
            .map(|(s, ms)| format!("{s}={ms:.2}"))
            .collect();
        let fork = t.kernel.spawn_sent_ns;
        steps.push(format!(
            "[since spawn_sent: {}]",
            t.kernel
                .join_steps
                .iter()
                .map(|(s, ns)| format!("{s}+{:.2}", ns.saturating_sub(fork) as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        steps.push(format!(
            "fork() {:.2} ms",
            t.kernel.zygote_fork_ns.unwrap_or(0) as f64 / 1e6
        ));
        println!(
            "{i}: acquire {:.2} ms (pool hit {}), kernel {}, 1+1 -> {:?} in {:?}",
            t.total().as_secs_f64() * 1e3,
            t.pool_hit,
            steps.join(" "),
            cell.result_text(),
            cell.timings.total
        );
        sb.close().await?;
        if pool > 0 {
            template.wait_pool(pool, Duration::from_secs(60)).await;
        }
    }
    println!("{:?}", template.stats());
    Ok(())
}
