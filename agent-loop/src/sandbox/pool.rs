//! The pooled backend: episodes' sandboxes from a `dsbox-kernel` [`Template`] — a zygote
//! that already holds the profile's modules (pandas + numpy) and a warm pool of ready
//! kernels, each in a sandbox of its own. An episode gets a kernel in about a millisecond
//! from the pool (about 10 ms when the pool is empty) instead of a fresh Python and its
//! imports; its task's data files are attached read-only under /data, and /submission is
//! writable for prediction tasks only.
//!
//! A kernel lost during a cell is replaced by the kernel crate in the same sandbox (the
//! files stay; the cell's error item says the state is lost).

use std::time::Duration;

use dsbox_kernel::{
    AcquireOptions, CellResult, DataMount as KernelDataMount, KernelManager, SandboxKernel,
    Template, TemplateConfig,
};
use dsbox_rootfs::Rootfs;

use super::{
    BackendConfig, BackendInfo, CodeSandbox, Result, SandboxError, SandboxFactory, SandboxRequest,
    download_via_kernel,
};
use crate::model::BoxFuture;

/// Makes [`PooledSandbox`]es from one kernel template.
#[derive(Debug, Clone)]
pub struct PooledFactory {
    template: Template,
}

impl PooledFactory {
    /// Sandboxes from `template` (its pool settings, limits and preload set).
    pub fn new(template: Template) -> PooledFactory {
        PooledFactory { template }
    }

    /// A template on `rootfs` with `config`'s limits and a warm pool of
    /// `config.pool_size` kernels (its zygote starts at once: needs a tokio runtime).
    pub fn from_rootfs(
        manager: &KernelManager,
        rootfs: &Rootfs,
        config: &BackendConfig,
    ) -> std::result::Result<PooledFactory, dsbox_kernel::SandboxError> {
        let mut template = TemplateConfig::new(rootfs);
        template.pool_size = config.pool_size.max(1);
        template.refill_parallelism = config.pool_size.clamp(1, 4);
        template.limits.memory = config.memory;
        template.limits.cpus = config.cpus;
        template.limits.pids = Some(512);
        template.limits.scratch_size = 512 << 20;
        Ok(PooledFactory::new(manager.template(template)?))
    }

    pub fn template(&self) -> &Template {
        &self.template
    }
}

impl SandboxFactory for PooledFactory {
    fn create<'a>(
        &'a self,
        request: &'a SandboxRequest,
    ) -> BoxFuture<'a, Result<Box<dyn CodeSandbox>>> {
        Box::pin(async move {
            let options = AcquireOptions {
                data: request
                    .data
                    .iter()
                    .map(|d| KernelDataMount::new(&d.host, &d.sandbox_path))
                    .collect(),
                writable_submission: request.submission,
            };
            let kernel = self
                .template
                .acquire(options)
                .await
                .map_err(|e| SandboxError::Start {
                    label: request.label.clone(),
                    detail: e.to_string(),
                })?;
            Ok(Box::new(PooledSandbox {
                label: request.label.clone(),
                kernel,
            }) as Box<dyn CodeSandbox>)
        })
    }

    /// Waits for the zygote (its start failing is an error) and `sandboxes` ready
    /// kernels (at most the pool's size).
    fn warm(&self, sandboxes: usize, timeout: Duration) -> BoxFuture<'_, Result<bool>> {
        let n = sandboxes.min(self.template.config().pool_size);
        Box::pin(async move {
            self.template
                .wait_ready()
                .await
                .map_err(|e| SandboxError::Start {
                    label: format!("the kernel template {}", self.template.name()),
                    detail: e.to_string(),
                })?;
            Ok(self.template.wait_pool(n, timeout).await)
        })
    }

    fn info(&self) -> BackendInfo {
        let rootfs = &self.template.config().rootfs;
        BackendInfo {
            backend: "pooled".into(),
            rootfs: rootfs.name.clone(),
            rootfs_hash: rootfs.content_hash.clone(),
        }
    }
}

/// One episode's sandbox: a [`SandboxKernel`].
#[derive(Debug)]
pub struct PooledSandbox {
    label: String,
    kernel: SandboxKernel,
}

impl PooledSandbox {
    fn failed(&self, e: dsbox_kernel::SandboxError) -> SandboxError {
        match e {
            dsbox_kernel::SandboxError::Closed { .. }
            | dsbox_kernel::SandboxError::Reclaimed { .. } => SandboxError::Gone {
                label: self.label.clone(),
                detail: e.to_string(),
            },
            other => SandboxError::Failed {
                label: self.label.clone(),
                detail: other.to_string(),
            },
        }
    }

    fn transfer(&self, path: &str, e: dsbox_kernel::SandboxError) -> SandboxError {
        SandboxError::Transfer {
            label: self.label.clone(),
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }

    /// The kernel crate's handle (timings, pids, cgroup counters).
    pub fn kernel(&self) -> &SandboxKernel {
        &self.kernel
    }
}

impl CodeSandbox for PooledSandbox {
    fn execute<'a>(
        &'a mut self,
        code: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CellResult>> {
        Box::pin(async move {
            match self.kernel.execute(code, timeout).await {
                Ok(cell) => Ok(cell),
                Err(e) => Err(self.failed(e)),
            }
        })
    }

    /// Files go straight into the sandbox's scratch dirs (/workdir, /tmp, /submission),
    /// owned by the sandbox's user.
    fn upload<'a>(&'a mut self, path: &'a str, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.kernel.upload(path, data).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.transfer(path, e)),
            }
        })
    }

    /// From the scratch dirs directly; anything else the kernel can read (e.g. /data)
    /// through the kernel.
    fn download<'a>(&'a mut self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            match self.kernel.download(path, max_bytes).await {
                Ok(data) => Ok(data),
                Err(dsbox_kernel::SandboxError::File(
                    dsbox_kernel::files::FileError::NotScratch { .. },
                )) => {
                    let label = self.label.clone();
                    download_via_kernel(self, &label, path, max_bytes).await
                }
                Err(e) => Err(self.transfer(path, e)),
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let label = self.label;
        let kernel = self.kernel;
        Box::pin(async move {
            kernel.close().await.map_err(|e| SandboxError::Failed {
                label,
                detail: e.to_string(),
            })
        })
    }
}
