//! Typed errors of the rootfs crate. Each message is one line that names the problem and
//! the fix; the path, name or package involved is kept as data.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// Everything that can go wrong while building, storing, verifying or importing a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("unknown profile `{name}`: known profiles are {}", known.join(", "))]
    UnknownProfile { name: String, known: Vec<String> },

    #[error("profile file {path}: {message}; fix the TOML (see rootfs/profiles/*.toml)")]
    ProfileInvalid { path: PathBuf, message: String },

    #[error(
        "invalid rootfs name `{name}`: use 1-64 characters from A-Z a-z 0-9 . _ - (not starting with `.`)"
    )]
    InvalidName { name: String },

    #[error(
        "rootfs `{name}` is not built: run `dsbox rootfs build --name {name}` (or drop --no-build)"
    )]
    NotBuilt { name: String },

    #[error("rootfs `{name}` is neither built in {store} nor a profile name: build it with `dsbox rootfs build --profile P --name {name}` (profiles: {})", profiles.join(", "))]
    UnknownRootfs {
        name: String,
        store: PathBuf,
        profiles: Vec<String>,
    },

    #[error("rootfs `{name}` not found in {store}: `dsbox rootfs list` shows what is built")]
    NotFound { name: String, store: PathBuf },

    #[error("invalid base `{base}`: use host, debootstrap or oci:PATH")]
    InvalidBase { base: String },

    #[error(
        "package `{package}` cannot be installed: {message}; check its name on the index or drop it"
    )]
    PackageNotFound { package: String, message: String },

    #[error(
        "no package index reachable ({index}): {message}; check the network, HTTP(S)_PROXY, or point UV_INDEX_URL / PIP_INDEX_URL at a reachable mirror"
    )]
    RegistryUnreachable { index: String, message: String },

    #[error(
        "disk full while writing {path}: free space there or point --store / DSBOX_STORE at a larger disk"
    )]
    DiskFull { path: PathBuf },

    #[error("{step} failed ({tool}): {message}")]
    Installer {
        step: &'static str,
        tool: String,
        message: String,
    },

    #[error("`{tool}` is not available: {hint}")]
    ToolMissing { tool: String, hint: String },

    #[error(
        "the lock file {path} is not usable: {message}; pass a file written by `dsbox rootfs build` (lock.txt beside the rootfs)"
    )]
    BadLock { path: PathBuf, message: String },

    #[error("{path} is not an OCI image layout or `docker save` tarball: {reason}")]
    NotOciLayout { path: PathBuf, reason: String },

    #[error("OCI image {path}: {reason}")]
    OciInvalid { path: PathBuf, reason: String },

    #[error("OCI layer {layer}: refusing entry `{entry}`: {reason}")]
    OciUnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error(
        "the image has no python3 (looked in {looked}): use an image with Python or --base debootstrap"
    )]
    NoPythonInImage { looked: String },

    #[error("debootstrap failed: {message}")]
    Debootstrap { message: String },

    #[error("the environment does not work: `{command}` failed: {message}")]
    SmokeTest { command: String, message: String },

    #[error(
        "manifest {path}: {message}; the store entry is damaged: `dsbox rootfs rm` it and build again"
    )]
    BadManifest { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RootfsError {
    /// An I/O error at `path`; `ENOSPC` becomes [`RootfsError::DiskFull`] so the user is told
    /// what to do about it.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            RootfsError::DiskFull { path }
        } else {
            RootfsError::Io { path, source }
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| RootfsError::io(path, e))
    }
}
