//! OCI import (`--base oci:PATH`): an OCI image layout directory or a `docker save`
//! tarball, unpacked layer by layer with whiteouts applied, into a root tree.
//!
//! Image files are untrusted: every path is resolved inside the root (symlinks included,
//! as a container runtime would see them), `..` components and device nodes are refused,
//! and blobs are checked against their digests.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use tar::EntryType;

use crate::error::{IoContext, Result, RootfsError};
use crate::manifest::hash_file;

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `sha256:...` of the image manifest (docker save: of its manifest.json).
    pub manifest_digest: String,
    /// The image's PATH, to find its python.
    pub path_dirs: Vec<String>,
    pub layers: usize,
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// Checks that `path` looks like an OCI layout or a `docker save` tarball (cheap checks
/// only; the import validates the rest).
pub fn check_source(path: &Path) -> Result<()> {
    let not = |reason: &str| RootfsError::NotOciLayout {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| not(&format!("cannot read it ({e})")))?;
    if meta.is_dir() {
        if path.join("oci-layout").is_file() && path.join("index.json").is_file() {
            return Ok(());
        }
        if path.join("manifest.json").is_file() {
            return Ok(());
        }
        return Err(not(
            "no oci-layout + index.json (OCI layout) and no manifest.json (docker save) in it",
        ));
    }
    let mut head = [0u8; 512];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| not(&format!("cannot read it ({e})")))?;
    if n < 512 || &head[257..262] != b"ustar" {
        return Err(not("it is neither a directory nor a tar archive"));
    }
    Ok(())
}

/// Imports the image at `source` into `root` (an empty dir). `work` is scratch space for
/// an unpacked tarball.
pub fn import(source: &Path, root: &Path, work: &Path) -> Result<Imported> {
    check_source(source)?;
    let layout = if source.is_dir() {
        source.to_path_buf()
    } else {
        std::fs::create_dir_all(work).at(work)?;
        let file = File::open(source).at(source)?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        // `unpack` refuses entries that would land outside `work`.
        archive
            .unpack(work)
            .map_err(|e| RootfsError::NotOciLayout {
                path: source.to_path_buf(),
                reason: format!("cannot unpack the tarball: {e}"),
            })?;
        work.to_path_buf()
    };
    let imported = if layout.join("index.json").is_file() && layout.join("oci-layout").is_file() {
        import_oci(source, &layout, root)?
    } else if layout.join("manifest.json").is_file() {
        import_docker(source, &layout, root)?
    } else {
        return Err(RootfsError::NotOciLayout {
            path: source.to_path_buf(),
            reason: "the tarball holds neither oci-layout + index.json nor manifest.json".into(),
        });
    };
    if layout != source {
        crate::store::remove_tree(&layout)?;
    }
    Ok(imported)
}

fn invalid(source: &Path, reason: impl Into<String>) -> RootfsError {
    RootfsError::OciInvalid {
        path: source.to_path_buf(),
        reason: reason.into(),
    }
}

/// A blob of the layout, with its digest checked.
fn blob(source: &Path, layout: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let digest = desc.digest();
    let algo = digest.algorithm().to_string();
    if algo != "sha256" {
        return Err(invalid(
            source,
            format!("unsupported digest algorithm {algo}"),
        ));
    }
    let rel = Path::new("blobs").join(&algo).join(digest.digest());
    let path = resolve_in_root(layout, &rel)?;
    if !path.is_file() {
        return Err(invalid(source, format!("blob {digest} is missing")));
    }
    let actual = hash_file(&path)?;
    if actual != digest.digest() {
        return Err(invalid(
            source,
            format!("blob {digest} is corrupt (its content hashes to sha256:{actual})"),
        ));
    }
    Ok(path)
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Picks the image manifest for this platform from an index (following nested indexes).
fn pick_manifest(
    source: &Path,
    layout: &Path,
    index: &ImageIndex,
    depth: u32,
) -> Result<(ImageManifest, String)> {
    if depth > 4 {
        return Err(invalid(source, "image indexes nest too deep"));
    }
    let fits = |d: &&Descriptor| match d.platform() {
        None => true,
        Some(p) => p.os().to_string() == "linux" && p.architecture().to_string() == host_arch(),
    };
    let desc = index.manifests().iter().find(fits).ok_or_else(|| {
        invalid(
            source,
            format!("no manifest for linux/{} in index.json", host_arch()),
        )
    })?;
    let path = blob(source, layout, desc)?;
    match desc.media_type() {
        MediaType::ImageIndex => {
            let nested =
                ImageIndex::from_file(&path).map_err(|e| invalid(source, e.to_string()))?;
            pick_manifest(source, layout, &nested, depth + 1)
        }
        MediaType::Other(t) if t.contains("manifest.list") => {
            let nested =
                ImageIndex::from_file(&path).map_err(|e| invalid(source, e.to_string()))?;
            pick_manifest(source, layout, &nested, depth + 1)
        }
        _ => {
            let manifest = ImageManifest::from_file(&path)
                .map_err(|e| invalid(source, format!("manifest: {e}")))?;
            Ok((manifest, desc.digest().to_string()))
        }
    }
}

fn import_oci(source: &Path, layout: &Path, root: &Path) -> Result<Imported> {
    let index = ImageIndex::from_file(layout.join("index.json"))
        .map_err(|e| invalid(source, format!("index.json: {e}")))?;
    let (manifest, digest) = pick_manifest(source, layout, &index, 0)?;
    let config_path = blob(source, layout, manifest.config())?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| invalid(source, format!("image config: {e}")))?;
    for (i, layer) in manifest.layers().iter().enumerate() {
        let path = blob(source, layout, layer)?;
        let compression = match layer.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Compression::Gzip
            }
            MediaType::Other(t) if t.ends_with("tar.gzip") || t.ends_with("tar+gzip") => {
                Compression::Gzip
            }
            MediaType::Other(t) if t.ends_with(".tar") || t.ends_with("tar") => Compression::None,
            other => {
                return Err(invalid(
                    source,
                    format!(
                        "layer {i} has media type {other}, which dsbox cannot unpack (tar and tar+gzip only)"
                    ),
                ));
            }
        };
        let name = format!("{i} ({})", layer.digest());
        apply_layer(&path, compression, root, &name)?;
    }
    Ok(Imported {
        manifest_digest: digest,
        path_dirs: path_dirs(&config),
        layers: manifest.layers().len(),
    })
}

/// One entry of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

fn import_docker(source: &Path, layout: &Path, root: &Path) -> Result<Imported> {
    let manifest_path = layout.join("manifest.json");
    let text = std::fs::read(&manifest_path).at(&manifest_path)?;
    let entries: Vec<DockerManifest> = serde_json::from_slice(&text)
        .map_err(|e| invalid(source, format!("manifest.json: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(invalid(
            source,
            format!(
                "manifest.json lists {} images; save exactly one",
                entries.len()
            ),
        ));
    };
    let config_path = resolve_in_root(layout, Path::new(&entry.config))?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| invalid(source, format!("image config {}: {e}", entry.config)))?;
    for (i, layer) in entry.layers.iter().enumerate() {
        let path = resolve_in_root(layout, Path::new(layer))?;
        if !path.is_file() {
            return Err(invalid(source, format!("layer {layer} is missing")));
        }
        // Layers in docker save are plain tars, but some tools gzip them: sniff.
        let mut magic = [0u8; 2];
        File::open(&path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .at(&path)?;
        let compression = if magic == [0x1f, 0x8b] {
            Compression::Gzip
        } else {
            Compression::None
        };
        apply_layer(&path, compression, root, &format!("{i} ({layer})"))?;
    }
    Ok(Imported {
        manifest_digest: format!("sha256:{}", hash_file(&manifest_path)?),
        path_dirs: path_dirs(&config),
        layers: entry.layers.len(),
    })
}

fn path_dirs(config: &ImageConfiguration) -> Vec<String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.env().as_ref())
        .and_then(|env| env.iter().find_map(|kv| kv.strip_prefix("PATH=")))
        .map(|path| path.split(':').map(str::to_string).collect())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Compression {
    None,
    Gzip,
}

fn open_layer(path: &Path, compression: Compression) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = BufReader::new(File::open(path).at(path)?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
    };
    Ok(tar::Archive::new(reader))
}

/// Applies one layer onto `root`: first its whiteouts (they delete what lower layers made),
/// then its files.
pub(crate) fn apply_layer(
    path: &Path,
    compression: Compression,
    root: &Path,
    layer: &str,
) -> Result<()> {
    let unsafe_entry = |entry: &str, reason: &str| RootfsError::OciUnsafeEntry {
        layer: layer.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let tar_err = |e: std::io::Error| RootfsError::OciInvalid {
        path: path.to_path_buf(),
        reason: format!("layer {layer}: {e}"),
    };

    // Pass 1: whiteouts.
    let mut archive = open_layer(path, compression)?;
    for entry in archive.entries().map_err(tar_err)? {
        let entry = entry.map_err(tar_err)?;
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let rel = clean_entry_path(&raw)
            .map_err(|reason| unsafe_entry(&raw.to_string_lossy(), reason))?;
        let Some(file_name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if file_name == OPAQUE {
            let dir = resolve_in_root(root, parent)?;
            if dir.is_dir() && dir.starts_with(root) {
                for child in std::fs::read_dir(&dir).at(&dir)? {
                    remove_any(&child.at(&dir)?.path())?;
                }
            }
        } else if let Some(victim) = file_name.strip_prefix(WHITEOUT) {
            let dir = resolve_in_root(root, parent)?;
            remove_any(&dir.join(victim))?;
        }
    }

    // Pass 2: everything else.
    let mut archive = open_layer(path, compression)?;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let rel = clean_entry_path(&raw).map_err(|reason| unsafe_entry(&shown, reason))?;
        let Some(file_name) = rel.file_name().map(|n| n.to_os_string()) else {
            continue; // the root itself
        };
        if file_name.to_string_lossy().starts_with(WHITEOUT) {
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Char | EntryType::Block => {
                return Err(unsafe_entry(
                    &shown,
                    "device nodes are not allowed in a rootfs",
                ));
            }
            EntryType::Fifo => {
                tracing::warn!("layer {layer}: skipping fifo {shown}");
                continue;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            _ => {}
        }
        let parent = resolve_in_root(root, rel.parent().unwrap_or(Path::new("")))?;
        std::fs::create_dir_all(&parent).at(&parent)?;
        let dst = parent.join(&file_name);
        if let Ok(existing) = std::fs::symlink_metadata(&dst) {
            // Never write through an existing symlink or into a replaced dir.
            if !(existing.is_dir() && kind.is_dir()) {
                remove_any(&dst)?;
            }
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(tar_err)?
                .ok_or_else(|| unsafe_entry(&shown, "hard link without a target"))?
                .into_owned();
            let target_rel =
                clean_entry_path(&target).map_err(|reason| unsafe_entry(&shown, reason))?;
            let target_path = resolve_in_root(root, &target_rel)?;
            std::fs::hard_link(&target_path, &dst).at(&dst)?;
            continue;
        }
        entry.unpack(&dst).map_err(|e| RootfsError::io(&dst, e))?;
    }
    Ok(())
}

/// An entry path as a relative path without `.`; `..` is refused (no image needs it, and
/// it is how traversal attacks start).
fn clean_entry_path(raw: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for comp in raw.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("`..` in an entry path (path traversal)"),
            Component::Prefix(_) => return Err("not a Unix path"),
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => crate::store::remove_tree(path),
        Ok(_) => std::fs::remove_file(path).at(path),
        Err(_) => Ok(()),
    }
}

/// Resolves `path` as the process inside the tree would: symlinks are followed but can
/// never leave `root` (an absolute target restarts at `root`, `..` stops at it). The last
/// component is followed too when it is a symlink. Missing components are kept as named.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    let mut queue: VecDeque<std::ffi::OsString> = VecDeque::new();
    for comp in path.components() {
        if let Component::Normal(c) = comp {
            queue.push_back(c.to_os_string());
        } else if comp == Component::ParentDir {
            queue.push_back("..".into());
        }
    }
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            stack.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&stack);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(RootfsError::io(
                        &candidate,
                        std::io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = std::fs::read_link(&candidate).at(&candidate)?;
                if target.is_absolute() {
                    stack.clear();
                }
                let mut prefix: Vec<std::ffi::OsString> = Vec::new();
                for comp in target.components() {
                    match comp {
                        Component::Normal(c) => prefix.push(c.to_os_string()),
                        Component::ParentDir => prefix.push("..".into()),
                        _ => {}
                    }
                }
                for p in prefix.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            _ => stack.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&stack);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("usr/etc-abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("usr/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("lib/x.so")).unwrap(),
            root.join("usr/lib/x.so")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("usr/etc-abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("usr/up/etc/shadow")).unwrap(),
            root.join("etc/shadow")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("loop/x")).is_err());
    }

    #[test]
    fn entry_paths_with_dotdot_are_refused() {
        assert_eq!(
            clean_entry_path(Path::new("./usr/bin/x")).unwrap(),
            Path::new("usr/bin/x")
        );
        assert_eq!(
            clean_entry_path(Path::new("/etc/x")).unwrap(),
            Path::new("etc/x")
        );
        assert!(clean_entry_path(Path::new("usr/../../etc/x")).is_err());
    }

    #[test]
    fn not_a_layout_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_source(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is not an OCI image layout") && err.contains("oci-layout"),
            "{err}"
        );
        let file = dir.path().join("x.txt");
        std::fs::write(&file, "hello").unwrap();
        let err = check_source(&file).unwrap_err().to_string();
        assert!(
            err.contains("neither a directory nor a tar archive"),
            "{err}"
        );
        let err = check_source(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
    }
}
