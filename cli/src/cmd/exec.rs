//! `dsbox exec`: run Python code once in a fresh sandbox kernel (forked from a zygote
//! that holds the preload modules, joined to a sandbox of its own) and print its outputs.
//!
//! stdout/stderr of the cell go to dsbox's stdout/stderr, the value of the last
//! expression is printed like a notebook's `Out:`, figures are saved as PNG files (their
//! names are printed), errors print their traceback to stderr.
//!
//! Exit codes: 0 when the cell ran without error; 1 when it raised, timed out or lost its
//! kernel (the error item says which); 125 when dsbox itself failed (one line on stderr).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dsbox_kernel::{
    AcquireOptions, AcquireTimings, CellResult, CellStatus, DataMount, KernelManager,
    ManagerConfig, OutputItem, SandboxKernel, Template, TemplateConfig,
};
use dsbox_runtime::spec::{parse_cpus, parse_duration, parse_size};

/// How to make the sandbox kernel (shared by `exec` and `shell`).
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// The rootfs: a name in the store or a profile (built on first use unless
    /// --no-build), e.g. `analysis`.
    #[arg(long, value_name = "NAME", default_value = dsbox_rootfs::DEFAULT_PROFILE)]
    pub rootfs: String,
    /// Fail instead of building a rootfs that is not in the store yet.
    #[arg(long)]
    pub no_build: bool,
    /// The rootfs store [default: $DSBOX_STORE or ~/.local/share/dsbox/rootfs].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Modules the zygote imports before forking the kernel, comma-separated (e.g.
    /// pandas,numpy,sklearn) [default: the rootfs profile's list].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub preload: Option<Vec<String>>,
    /// Wall-clock limit per cell: then KeyboardInterrupt, and the kernel is restarted if
    /// it does not stop within 2 s.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
    /// Task data, read-only: SRC:DST with DST under /data (SRC alone: /data/<its name>).
    #[arg(long, value_name = "SRC[:DST]")]
    pub data: Vec<String>,
    /// Keep /submission writable (otherwise it is read-only).
    #[arg(long)]
    pub writable_submission: bool,
    /// Memory limit of the sandbox.
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    pub mem: String,
    /// Task limit of the sandbox.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub pids: u64,
    /// CPU quota in cores (e.g. 0.5).
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<String>,
    /// Where figures are saved (as image-N.png; existing files are never overwritten).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub images: PathBuf,
}

/// A validated [`KernelArgs`].
pub struct KernelSetup {
    pub config: TemplateConfig,
    pub options: AcquireOptions,
    pub timeout: Duration,
    pub images: PathBuf,
}

impl KernelArgs {
    /// Check the arguments and resolve the rootfs (building it on first use).
    pub fn setup(&self) -> anyhow::Result<KernelSetup> {
        let timeout = parse_duration(&self.timeout)?;
        let mem = parse_size(&self.mem)?;
        let cpus = self.cpus.as_deref().map(parse_cpus).transpose()?;
        anyhow::ensure!(
            self.pids >= 16,
            "--pids must be at least 16 (got {})",
            self.pids
        );
        let data = self
            .data
            .iter()
            .map(|d| parse_data(d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rootfs =
            super::rootfs::ensure_rootfs(&self.rootfs, self.store.as_deref(), self.no_build)?;
        let mut config = TemplateConfig::new(&rootfs);
        if let Some(preload) = &self.preload {
            config.preload = preload
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
        }
        config.pool_size = 0;
        config.limits.memory = Some(mem);
        config.limits.pids = Some(self.pids);
        config.limits.cpus = cpus;
        Ok(KernelSetup {
            config,
            options: AcquireOptions {
                data,
                writable_submission: self.writable_submission,
            },
            timeout,
            images: self.images.clone(),
        })
    }
}

/// `SRC:DST` or `SRC` (then DST is /data/<file name>).
fn parse_data(value: &str) -> anyhow::Result<DataMount> {
    let (src, dst) = match value.split_once(':') {
        Some((s, d)) => (PathBuf::from(s), PathBuf::from(d)),
        None => {
            let src = PathBuf::from(value);
            let name = src.file_name().with_context(|| {
                format!("--data {value}: give SRC:DST, e.g. ./train.csv:/data/train.csv")
            })?;
            let dst = Path::new("/data").join(name);
            (src, dst)
        }
    };
    anyhow::ensure!(
        dst.starts_with("/data/"),
        "--data {value}: the destination must be below /data (e.g. {}:/data/{})",
        src.display(),
        src.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let src = std::fs::canonicalize(&src)
        .with_context(|| format!("--data {value}: cannot open {}", src.display()))?;
    Ok(DataMount::new(src, dst))
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Print the result as JSON (items, status, timings) instead of text.
    #[arg(long)]
    json: bool,
    /// Print where the kernel's start time went to stderr.
    #[arg(long)]
    timings: bool,
    /// The Python code; `-` or nothing reads it from stdin.
    #[arg(value_name = "CODE")]
    code: Option<String>,
}

/// A tokio runtime for the CLI's kernel commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Start the template's zygote and acquire one sandbox kernel.
pub async fn start_kernel(setup: &KernelSetup) -> anyhow::Result<(Template, SandboxKernel)> {
    let manager = KernelManager::new(ManagerConfig::default());
    let template = manager.template(setup.config.clone())?;
    let state = template.wait_ready().await?;
    if let dsbox_kernel::ZygoteState::Up { failed, .. } = &state {
        for (module, error) in failed {
            eprintln!("dsbox: warning: could not preload `{module}`: {error}");
        }
    }
    let sandbox = template.acquire(setup.options.clone()).await?;
    Ok((template, sandbox))
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let code = match args.code.as_deref() {
        None | Some("-") => {
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .context("cannot read the code from stdin")?;
            code
        }
        Some(code) => code.to_owned(),
    };
    let setup = args.kernel.setup()?;
    let rt = runtime()?;
    rt.block_on(async {
        let (_template, mut sandbox) = start_kernel(&setup).await?;
        let timings = sandbox.acquire_timings().clone();
        if args.timings {
            eprintln!("{}", describe_timings(&timings));
        }
        let interrupter = sandbox.interrupter();
        let result = {
            let exec = sandbox.execute(&code, setup.timeout);
            tokio::pin!(exec);
            loop {
                tokio::select! {
                    r = &mut exec => break r?,
                    _ = tokio::signal::ctrl_c() => {
                        if let Some(i) = &interrupter {
                            let _ = i.interrupt();
                        }
                    }
                }
            }
        };
        let ok = result.status == CellStatus::Ok;
        if args.json {
            let out = serde_json::json!({ "result": result, "timings": timings });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            let mut images = ImageSaver::new(&setup.images);
            print_result(&result, &mut images, "")?;
        }
        sandbox.close().await?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// One line per start step: `kernel ready in 9.81 ms: shell_ready 2.31, spawn_sent ...`.
pub fn describe_timings(t: &AcquireTimings) -> String {
    let steps: Vec<String> = t
        .kernel
        .steps_ms()
        .iter()
        .map(|(s, ms)| format!("{s} {ms:.2}"))
        .collect();
    format!(
        "dsbox: kernel ready in {:.2} ms ({}; ms since the request: {})",
        t.total().as_secs_f64() * 1e3,
        if t.pool_hit {
            "from the warm pool"
        } else {
            "zygote fork"
        },
        steps.join(", ")
    )
}

/// Saves figures as `image-N.png` in a directory, never overwriting.
pub struct ImageSaver {
    dir: PathBuf,
    next: u32,
}

impl ImageSaver {
    pub fn new(dir: &Path) -> ImageSaver {
        ImageSaver {
            dir: dir.to_path_buf(),
            next: 1,
        }
    }

    fn save(&mut self, png: &[u8]) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        loop {
            let path = self.dir.join(format!("image-{}.png", self.next));
            self.next += 1;
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(png)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
    }
}

/// Print a cell's items in order: streams to stdout/stderr, values as `Out:` text,
/// figures saved (their path printed), errors' tracebacks to stderr. A value is printed
/// after `value_prefix` (`Out[3]: ` in a REPL, nothing for exec).
pub fn print_result(
    result: &CellResult,
    images: &mut ImageSaver,
    value_prefix: &str,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    for item in &result.items {
        match item {
            OutputItem::Stream { name, text } => {
                if name.as_str() == "stderr" {
                    let mut e = stderr.lock();
                    e.write_all(text.as_bytes())?;
                    e.flush()?;
                } else {
                    let mut o = stdout.lock();
                    o.write_all(text.as_bytes())?;
                    o.flush()?;
                }
            }
            OutputItem::Result { .. } | OutputItem::DisplayData { .. } => {
                let is_result = matches!(item, OutputItem::Result { .. });
                if let Some(png) = item.image_png() {
                    match png {
                        Ok(bytes) => {
                            let path = images.save(&bytes)?;
                            println!(
                                "[{} saved to {}]",
                                item.text_plain().unwrap_or("image/png"),
                                path.display()
                            );
                        }
                        Err(e) => eprintln!("dsbox: an image of the cell is not valid base64: {e}"),
                    }
                } else if let Some(text) = item.text_plain() {
                    if is_result {
                        println!("{value_prefix}{text}");
                    } else {
                        println!("{text}");
                    }
                } else {
                    let kinds: Vec<&str> = match item {
                        OutputItem::Result { data } | OutputItem::DisplayData { data } => {
                            data.keys().map(String::as_str).collect()
                        }
                        _ => Vec::new(),
                    };
                    println!("[{} output]", kinds.join(", "));
                }
            }
            OutputItem::Error { traceback, .. } => {
                let mut e = stderr.lock();
                for line in traceback {
                    writeln!(e, "{line}")?;
                }
            }
        }
    }
    if result.truncation.any() {
        eprintln!("dsbox: output was cut: {:?}", result.truncation);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_goes_below_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("train.csv");
        std::fs::write(&f, "a\n").unwrap();
        let m = parse_data(f.to_str().unwrap()).unwrap();
        assert_eq!(m.destination, PathBuf::from("/data/train.csv"));
        let m = parse_data(&format!("{}:/data/x/y.csv", f.display())).unwrap();
        assert_eq!(m.destination, PathBuf::from("/data/x/y.csv"));
        let err = parse_data(&format!("{}:/etc/y.csv", f.display())).unwrap_err();
        assert!(err.to_string().contains("below /data"), "{err}");
        let err = parse_data("/nonexistent/dsbox/x.csv").unwrap_err();
        assert!(format!("{err:#}").contains("cannot open"), "{err:#}");
    }
}
