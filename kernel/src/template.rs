//! What a kernel template is — a rootfs, a preload set and a sandbox policy — and the two
//! `SandboxSpec`s derived from it: the zygote's (no pid namespace, capabilities kept, no
//! seccomp/landlock: it never runs user code) and the kernels' shells' (every protection).
//! One zygote serves one template; templates with the same key share it (see
//! [`crate::pool::KernelManager::template`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dsbox_rootfs::{Rootfs, RootfsLayout};
use dsbox_runtime::SandboxSpec;
use dsbox_runtime::spec::{
    CapabilityMode, LandlockSpec, Limits, Mount, Namespaces, ProcessSpec, Root, Scratch,
    SeccompPolicy,
};

use crate::client::ClientConfig;
use crate::zygote::ZYGOTE_BOOTSTRAP;

/// Where task data appears in every kernel sandbox (attached at acquire time).
pub const DATA_DIR: &str = "/data";
/// The fd number of the zygote's control socket inside its sandbox.
pub const ZYGOTE_CONTROL_FD: i32 = 3;
/// Modules preloaded when neither the caller nor the rootfs's profile names any.
pub const DEFAULT_PRELOAD: &[&str] = &["pandas", "numpy"];
/// Preload modules a template may name (besides what the rootfs's profile lists).
pub const KNOWN_PRELOAD: &[&str] = &[
    "pandas",
    "numpy",
    "sklearn",
    "scipy",
    "statsmodels",
    "matplotlib",
];
/// Size of the tmpfs at /data (it holds only mount points).
const DATA_TMPFS_SIZE: u64 = 1 << 20;

/// The rootfs a template runs on (what [`dsbox_rootfs::ensure`] resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRootfs {
    /// Its name in the store (for messages).
    pub name: String,
    pub layout: RootfsLayout,
    /// The interpreter inside the sandbox.
    pub python: PathBuf,
    /// `sha256:...` of the tree: part of the template's identity.
    pub content_hash: String,
    /// The profile's preload list.
    pub preload: Vec<String>,
}

impl From<&Rootfs> for TemplateRootfs {
    fn from(r: &Rootfs) -> Self {
        TemplateRootfs {
            name: r.name.clone(),
            layout: r.layout.clone(),
            python: r.python.clone(),
            content_hash: r.content_hash.clone(),
            preload: r.preload.clone(),
        }
    }
}

/// Limits of each kernel's sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelLimits {
    /// cgroup memory limit (bytes). An OOM kills only that kernel.
    pub memory: Option<u64>,
    /// cgroup pids limit (fork bombs stop there).
    pub pids: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Size of each scratch tmpfs (/tmp, /workdir, /submission).
    pub scratch_size: u64,
}

impl Default for KernelLimits {
    fn default() -> Self {
        KernelLimits {
            memory: Some(2 << 30),
            pids: Some(256),
            cpus: None,
            scratch_size: 256 << 20,
        }
    }
}

/// Everything that defines a template and its pool.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    pub rootfs: TemplateRootfs,
    /// Modules the zygote imports before forking (default: the rootfs profile's list, else
    /// pandas + numpy).
    pub preload: Vec<String>,
    pub limits: KernelLimits,
    /// Ready kernels kept in the warm pool.
    pub pool_size: usize,
    /// Kernels the pool prepares at once when it refills.
    pub refill_parallelism: usize,
    /// The pool is emptied after this long without an acquire, and refilled at the next.
    pub pool_idle: Duration,
    /// An acquired sandbox unused (no execute, upload or download) for this long is
    /// destroyed; its handle then says so. `None`: never.
    pub sandbox_idle: Option<Duration>,
    /// How long the zygote may take to preload.
    pub zygote_start_timeout: Duration,
    /// Per-cell caps, interrupt grace, hello timeout.
    pub client: ClientConfig,
}

impl TemplateConfig {
    /// A template on `rootfs` with its profile's preload list and default limits.
    pub fn new(rootfs: impl Into<TemplateRootfs>) -> TemplateConfig {
        let rootfs = rootfs.into();
        let preload = if rootfs.preload.is_empty() {
            DEFAULT_PRELOAD.iter().map(|s| s.to_string()).collect()
        } else {
            rootfs.preload.clone()
        };
        TemplateConfig {
            rootfs,
            preload,
            limits: KernelLimits::default(),
            pool_size: 2,
            refill_parallelism: 2,
            pool_idle: Duration::from_secs(600),
            sandbox_idle: None,
            zygote_start_timeout: Duration::from_secs(120),
            client: ClientConfig::default(),
        }
    }

    /// A readable name: `rootfs[pandas,numpy]`.
    pub fn name(&self) -> String {
        format!("{}[{}]", self.rootfs.name, self.preload.join(","))
    }

    /// The template's identity: rootfs content, preload set and sandbox policy. Two
    /// configs with the same key share one zygote and one pool.
    pub fn key(&self) -> String {
        let mut preload = self.preload.clone();
        preload.sort();
        preload.dedup();
        let policy = serde_json::to_string(&self.shell_spec()).unwrap_or_default();
        format!(
            "{}|{}|{}",
            self.rootfs.content_hash,
            preload.join(","),
            policy
        )
    }

    /// What makes two templates with the same key different pools.
    pub fn pool_key(&self) -> String {
        format!(
            "{}|{}|{:?}|{:?}|{:?}|{:?}",
            self.pool_size,
            self.refill_parallelism,
            self.pool_idle,
            self.sandbox_idle,
            self.zygote_start_timeout,
            self.client
        )
    }

    /// The root and the mounts that put the rootfs's environment at /opt/dsbox/env.
    fn root_and_mounts(&self) -> (Root, Vec<Mount>) {
        match &self.rootfs.layout {
            RootfsLayout::Host { env_dir } => (
                Root::Host,
                vec![Mount::Bind {
                    source: env_dir.clone(),
                    destination: PathBuf::from(dsbox_rootfs::ENV_PATH),
                    readonly: true,
                }],
            ),
            RootfsLayout::Dir { root } => (Root::Dir(root.clone()), Vec::new()),
        }
    }

    /// The zygote's sandbox: mount/net/ipc/uts/cgroup namespaces, pivoted into the
    /// rootfs, **host pid namespace** (it `setns`es into shells' pid namespaces, which are
    /// children of the host's), capabilities kept, no seccomp or landlock (it never runs
    /// user code), root; its control socket is fd [`ZYGOTE_CONTROL_FD`].
    pub fn zygote_spec(&self) -> SandboxSpec {
        let (root, mounts) = self.root_and_mounts();
        let mut args = vec![
            self.rootfs.python.display().to_string(),
            "-c".to_owned(),
            ZYGOTE_BOOTSTRAP.to_owned(),
            "--control-fd".to_owned(),
            ZYGOTE_CONTROL_FD.to_string(),
        ];
        if !self.preload.is_empty() {
            args.push("--preload".to_owned());
            args.push(self.preload.join(","));
        }
        SandboxSpec {
            process: Some(ProcessSpec {
                args,
                // The zygote pins BLAS/OpenMP threads itself before importing anything.
                env: Vec::new(),
                cwd: PathBuf::from("/"),
                uid: 0,
                gid: 0,
            }),
            root,
            mounts,
            scratch: Scratch {
                dirs: vec![PathBuf::from("/tmp")],
                size: 16 << 20,
            },
            limits: Limits {
                memory: None,
                pids: None,
                cpus: None,
                timeout: None,
                ..Limits::default()
            },
            namespaces: Namespaces {
                pid: false,
                user: false,
            },
            hostname: "dsbox-zygote".to_owned(),
            seccomp: SeccompPolicy::Disabled,
            landlock: LandlockSpec {
                enabled: false,
                exclude: Vec::new(),
            },
            capabilities: CapabilityMode::Keep,
            no_new_privs: false,
            ..SandboxSpec::default()
        }
    }

    /// A kernel's shell: every namespace (pid included), its own cgroup with the limits,
    /// scratch tmpfs, /data (an empty read-only directory until data is attached), the
    /// runtime's seccomp policy and landlock rules, capabilities dropped; no process
    /// (the kernel joins it).
    pub fn shell_spec(&self) -> SandboxSpec {
        let (root, mut mounts) = self.root_and_mounts();
        // /data: a small tmpfs that only the runtime writes (mount points for the task's
        // data, attached at acquire time, then made read-only); kernels get a read-only
        // landlock rule for it (see `kernel_join_plan`). It must be a filesystem of its
        // own with the data mounted *below* its root: landlock ignores the rules of
        // covered mount points, so a rule on /data holds only for what sits under it.
        mounts.push(Mount::Tmpfs {
            destination: PathBuf::from(DATA_DIR),
            size: Some(DATA_TMPFS_SIZE),
        });
        SandboxSpec {
            process: None,
            root,
            mounts,
            scratch: Scratch {
                size: self.limits.scratch_size,
                ..Scratch::default()
            },
            limits: Limits {
                memory: self.limits.memory,
                pids: self.limits.pids,
                cpus: self.limits.cpus,
                timeout: None,
                ..Limits::default()
            },
            ..SandboxSpec::default()
        }
    }

    /// The scratch directories of the shells (where upload and download work).
    pub fn scratch_dirs(&self) -> Vec<PathBuf> {
        Scratch::default().dirs
    }
}

/// The JoinPlan kernels apply, from the shell's: the landlock rule for /data is
/// read-only (the runtime's rule for a tmpfs would let the kernel write there).
pub(crate) fn kernel_join_plan(mut plan: dsbox_runtime::JoinPlan) -> dsbox_runtime::JoinPlan {
    use dsbox_runtime::landlock::{EXECUTE, READ_DIR, READ_FILE};
    if let Some(ll) = plan.landlock.as_mut() {
        for rule in &mut ll.rules {
            if rule.path == Path::new(DATA_DIR) {
                rule.access = (EXECUTE | READ_FILE | READ_DIR) & ll.handled_access_fs;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> TemplateRootfs {
        TemplateRootfs {
            name: "analysis".into(),
            layout: RootfsLayout::Host {
                env_dir: "/store/objects/abc/env".into(),
            },
            python: "/opt/dsbox/env/bin/python".into(),
            content_hash: "sha256:abc".into(),
            preload: vec![],
        }
    }

    #[test]
    fn the_zygote_keeps_capabilities_in_the_host_pid_namespace_without_filters() {
        let cfg = TemplateConfig::new(rootfs());
        assert_eq!(cfg.preload, ["pandas", "numpy"]);
        let z = cfg.zygote_spec();
        assert!(!z.namespaces.pid);
        assert_eq!(z.capabilities, CapabilityMode::Keep);
        assert_eq!(z.seccomp, SeccompPolicy::Disabled);
        assert!(!z.landlock.enabled);
        let p = z.process.unwrap();
        assert_eq!(p.uid, 0);
        assert_eq!(p.args[0], "/opt/dsbox/env/bin/python");
        assert_eq!(
            &p.args[3..],
            ["--control-fd", "3", "--preload", "pandas,numpy"]
        );
        assert!(
            matches!(&z.mounts[0], Mount::Bind { destination, readonly: true, .. } if destination == Path::new("/opt/dsbox/env"))
        );
    }

    #[test]
    fn shells_have_every_protection_and_a_data_dir_of_their_own() {
        let mut cfg = TemplateConfig::new(rootfs());
        cfg.limits.memory = Some(512 << 20);
        let s = cfg.shell_spec();
        assert!(s.process.is_none());
        assert!(s.namespaces.pid);
        assert_eq!(s.capabilities, CapabilityMode::Drop);
        assert_eq!(s.seccomp, SeccompPolicy::Default);
        assert!(s.landlock.enabled && s.no_new_privs);
        assert_eq!(s.limits.memory, Some(512 << 20));
        assert!(s.mounts.iter().any(
            |m| matches!(m, Mount::Tmpfs { destination, .. } if destination == Path::new("/data"))
        ));
        s.validate()
            .map(|_| ())
            .or_else(|e| match e {
                // The env dir of this fake rootfs does not exist; everything else is valid.
                dsbox_runtime::spec::SpecError::MissingMountSource { .. } => Ok(()),
                other => Err(other),
            })
            .unwrap();
    }

    #[test]
    fn the_key_changes_with_the_rootfs_the_preload_set_and_the_policy() {
        let a = TemplateConfig::new(rootfs());
        let mut b = a.clone();
        b.preload = vec!["numpy".into(), "pandas".into()];
        assert_eq!(
            a.key(),
            b.key(),
            "order of the preload list does not matter"
        );
        b.preload.push("scipy".into());
        assert_ne!(a.key(), b.key());
        let mut c = a.clone();
        c.limits.memory = Some(1 << 30);
        assert_ne!(a.key(), c.key());
        let mut d = a.clone();
        d.rootfs.content_hash = "sha256:def".into();
        assert_ne!(a.key(), d.key());
        let mut e = a.clone();
        e.pool_size = 9;
        assert_eq!(
            a.key(),
            e.key(),
            "pool settings are not part of the identity"
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use dsbox_runtime::landlock::{LandlockPlan, LandlockRule, WRITE_FILE, fs_access_for_abi};

    #[test]
    fn kernels_may_only_read_data() {
        let handled = fs_access_for_abi(6);
        let plan = dsbox_runtime::JoinPlan {
            namespaces: 0,
            uid: 1000,
            gid: 1000,
            cwd: "/workdir".into(),
            env: vec![],
            rlimits: vec![],
            landlock: Some(LandlockPlan {
                abi: 6,
                handled_access_fs: handled,
                handled_access_net: 0,
                scoped: 0,
                rules: vec![
                    LandlockRule {
                        path: "/workdir".into(),
                        access: handled,
                    },
                    LandlockRule {
                        path: "/data".into(),
                        access: handled,
                    },
                ],
            }),
            seccomp_bpf: None,
            hostname: "dsbox".into(),
            drop_capabilities: true,
            no_new_privs: true,
        };
        let ll = kernel_join_plan(plan).landlock.unwrap();
        assert_eq!(ll.rules[0].access, handled, "scratch stays writable");
        assert_eq!(ll.rules[1].access & WRITE_FILE, 0, "/data is read-only");
        assert_ne!(ll.rules[1].access & dsbox_runtime::landlock::READ_FILE, 0);
    }
}
