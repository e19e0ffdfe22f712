//! dsbox-rootfs: builds the read-only Python environments sandboxes run in (profiles as
//! data, locks, compiled bytecode, a content-addressed store) and imports OCI images.
//!
//! Main types:
//! - [`ProfileSet`] / [`Profile`]: which packages and preload modules (TOML, user-extendable).
//! - [`BuildOptions`] + [`build`]: base (`host`, `debootstrap`, `oci:PATH`) + venv + lock
//!   (uv, else pip) + bytecode, committed atomically into a [`Store`].
//! - [`Store`]: `objects/<hash>` named by `names/<name>`; list, rm, gc.
//! - [`ensure`]: name (or profile) -> [`Rootfs`], building on first use; the
//!   [`RootfsLayout`] tells the runtime what to mount.
//! - [`verify`]: re-hashes a stored rootfs against its manifest.
//!
//! Inside a sandbox the environment is always at [`ENV_PATH`] (`/opt/dsbox/env`); its
//! interpreter is `/opt/dsbox/env/bin/python`, whatever the host path of the store.

mod build;
mod debootstrap;
mod error;
mod installer;
mod manifest;
pub mod oci;
mod process;
mod profile;
mod progress;
mod store;

use std::path::PathBuf;

pub use build::{Base, BuildOptions, Built, build};
pub use error::{Result, RootfsError};
pub use installer::{Installer, InstallerChoice, parse_lock};
pub use manifest::{
    BaseRecord, FileRecord, LayoutKind, LeftOut, Manifest, ManifestHeader, PackagePin, VerifyReport,
};
pub use profile::{DEFAULT_PROFILE, Profile, ProfileSet};
pub use progress::Progress;
pub use store::{GcReport, Store, StoreEntry, validate_name};

/// Where the environment sits inside every sandbox.
pub const ENV_PATH: &str = "/opt/dsbox/env";

/// The interpreter inside every sandbox.
pub const SANDBOX_PYTHON: &str = "/opt/dsbox/env/bin/python";

/// Directories a `Dir` rootfs holds (empty) for the sandbox to mount over.
pub const SANDBOX_MOUNTPOINTS: &[&str] = &[
    "/proc",
    "/dev",
    "/tmp",
    "/workdir",
    "/submission",
    "/data",
    "/opt/dsbox/env",
];

/// How the runtime turns a rootfs into mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsLayout {
    /// The host's system dirs read-only, plus `env_dir` bound at [`ENV_PATH`].
    Host { env_dir: PathBuf },
    /// A complete tree that already holds [`ENV_PATH`] and the [`SANDBOX_MOUNTPOINTS`].
    Dir { root: PathBuf },
}

/// A built rootfs, resolved from its name.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub name: String,
    pub layout: RootfsLayout,
    /// The interpreter inside the sandbox (`/opt/dsbox/env/bin/python`).
    pub python: PathBuf,
    /// Modules the kernel zygote preloads.
    pub preload: Vec<String>,
    /// `sha256:...` over the tree.
    pub content_hash: String,
    /// The store object (holds manifest.json and lock.txt beside the tree).
    pub object_dir: PathBuf,
    pub manifest: ManifestHeader,
    /// True when this call built it (first use), false when it was already in the store.
    pub freshly_built: bool,
}

impl Rootfs {
    fn from_entry(entry: StoreEntry) -> Self {
        let tree = entry.tree();
        let layout = match entry.header.layout {
            LayoutKind::Host => RootfsLayout::Host { env_dir: tree },
            LayoutKind::Dir => RootfsLayout::Dir { root: tree },
        };
        Self {
            name: entry.name,
            layout,
            python: entry.header.python.clone(),
            preload: entry.header.preload.clone(),
            content_hash: entry.header.content_hash.clone(),
            object_dir: entry.object_dir,
            manifest: entry.header,
            freshly_built: false,
        }
    }

    /// The environment's directory on the host (what is bound at [`ENV_PATH`]).
    pub fn env_dir_on_host(&self) -> PathBuf {
        match &self.layout {
            RootfsLayout::Host { env_dir } => env_dir.clone(),
            RootfsLayout::Dir { root } => root.join(ENV_PATH.trim_start_matches('/')),
        }
    }

    /// The lock the rootfs was installed from.
    pub fn lock_file(&self) -> PathBuf {
        self.object_dir.join("lock.txt")
    }
}

/// How [`ensure`] finds or builds a rootfs.
#[derive(Debug, Clone)]
pub struct EnsureOptions {
    pub store: Store,
    /// Build a missing rootfs whose name is a profile (false: `--no-build`).
    pub build_missing: bool,
    pub base: Base,
    pub installer: InstallerChoice,
    pub profiles_dir: Option<PathBuf>,
}

impl EnsureOptions {
    /// The default store, building on first use on the host base.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            build_missing: true,
            base: Base::Host,
            installer: InstallerChoice::Auto,
            profiles_dir: ProfileSet::default_user_dir(),
        }
    }
}

/// The rootfs called `name`; when it is not built and `name` is a profile, builds it
/// (unless `build_missing` is false). Used by `dsbox run --rootfs`, `exec`, `eval`,
/// `serve` and `demo`.
pub fn ensure(name: &str, opts: &EnsureOptions, progress: &Progress) -> Result<Rootfs> {
    validate_name(name)?;
    if let Some(entry) = opts.store.get(name)? {
        return Ok(Rootfs::from_entry(entry));
    }
    let profiles = ProfileSet::load(opts.profiles_dir.as_deref())?;
    if !profiles.contains(name) {
        return Err(RootfsError::UnknownRootfs {
            name: name.to_string(),
            store: opts.store.root().to_path_buf(),
            profiles: profiles.names(),
        });
    }
    if !opts.build_missing {
        return Err(RootfsError::NotBuilt {
            name: name.to_string(),
        });
    }
    // Several commands may ask for the same missing rootfs at once: one builds, the others
    // wait and then find it built.
    let _building = opts.store.build_lock(name)?;
    if let Some(entry) = opts.store.get(name)? {
        return Ok(Rootfs::from_entry(entry));
    }
    let mut build_opts = BuildOptions::new(name);
    build_opts.name = Some(name.to_string());
    build_opts.base = opts.base.clone();
    build_opts.installer = opts.installer;
    build_opts.profiles_dir = opts.profiles_dir.clone();
    let built = build(&opts.store, &build_opts, progress)?;
    let mut rootfs = Rootfs::from_entry(built.entry);
    rootfs.freshly_built = true;
    Ok(rootfs)
}

/// Opens a built rootfs without building.
pub fn open(store: &Store, name: &str) -> Result<Rootfs> {
    match store.get(name)? {
        Some(entry) => Ok(Rootfs::from_entry(entry)),
        None => Err(RootfsError::NotFound {
            name: name.to_string(),
            store: store.root().to_path_buf(),
        }),
    }
}

/// The full manifest (with per-file hashes) of a stored rootfs.
pub fn read_manifest(store: &Store, name: &str) -> Result<Manifest> {
    let rootfs = open(store, name)?;
    Manifest::read(&rootfs.object_dir.join("manifest.json"))
}

/// Re-hashes every file of `name` and compares with its manifest; also checks that the
/// manifest's content hash is the one the object is stored under.
pub fn verify(store: &Store, name: &str) -> Result<VerifyReport> {
    let rootfs = open(store, name)?;
    let manifest_path = rootfs.object_dir.join("manifest.json");
    let manifest = Manifest::read(&manifest_path)?;
    let tree = manifest::tree_dir(&rootfs.object_dir, manifest.layout);
    let report = manifest::verify_tree(&tree, &manifest.files);
    let listed = manifest::content_hash(&manifest.files);
    let stored_as = rootfs
        .object_dir
        .file_name()
        .map(|n| format!("sha256:{}", n.to_string_lossy()))
        .unwrap_or_default();
    if listed != manifest.content_hash || stored_as != manifest.content_hash {
        return Err(RootfsError::BadManifest {
            path: manifest_path,
            message: format!(
                "its file list hashes to {listed}, it records {}, and it is stored as {stored_as}",
                manifest.content_hash
            ),
        });
    }
    Ok(report)
}
