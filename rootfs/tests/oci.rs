//! OCI import: an image the test makes itself (the host's python3 and its libraries in a
//! first layer, whiteouts and an opaque dir in a second) is imported, gets the `minimal`
//! environment, and runs python3 from it. Malicious layers are refused.
//!
//! Needs root (chroot) and the host's Debian/Ubuntu /usr/bin/python3, like the rest of the
//! suite.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use dsbox_rootfs::{Base, BuildOptions, Progress, RootfsError, RootfsLayout, Store};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` as a blob of the layout; returns its digest.
fn put_blob(layout: &Path, data: &[u8]) -> String {
    let digest = hex(&Sha256::digest(data));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&digest), data).unwrap();
    format!("sha256:{digest}")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, path, target).unwrap();
}

/// An entry whose name is written raw (tar's own API refuses `..`, as it should).
fn add_raw(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, data: &[u8]) {
    let mut h = header(kind, 0o644, data.len() as u64);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// `python3.X`: what the host's /usr/bin/python3 points at.
fn host_python() -> String {
    let target = std::fs::read_link("/usr/bin/python3").expect("/usr/bin/python3 is a symlink");
    target.file_name().unwrap().to_string_lossy().into_owned()
}

/// Layer 1: merged-/usr skeleton, the host's python3.X with the libraries it links, its
/// stdlib, and files for layer 2 to delete.
fn base_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    add_symlink(&mut b, "bin", "usr/bin");
    add_symlink(&mut b, "lib", "usr/lib");
    add_symlink(&mut b, "lib64", "usr/lib64");
    let py = host_python();
    let python = std::fs::read(format!("/usr/bin/{py}")).expect("the host's /usr/bin/python3.X");
    let mut h = header(tar::EntryType::Regular, 0o755, python.len() as u64);
    b.append_data(&mut h, format!("usr/bin/{py}"), python.as_slice())
        .unwrap();
    add_symlink(&mut b, "usr/bin/python3", &py);
    let ldd = Command::new("ldd")
        .arg(format!("/usr/bin/{py}"))
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from)
        else {
            continue;
        };
        let data = std::fs::read(&path).unwrap();
        // /lib/x86_64-linux-gnu/libc.so.6 -> usr/lib/x86_64-linux-gnu/libc.so.6
        let rel = path.strip_prefix("/").unwrap();
        let rel = if rel.starts_with("usr") {
            rel.to_path_buf()
        } else {
            Path::new("usr").join(rel)
        };
        let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
        b.append_data(&mut h, rel, data.as_slice()).unwrap();
    }
    for entry in std::fs::read_dir(format!("/usr/lib/{py}")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if [
            "test",
            "idlelib",
            "tkinter",
            "turtledemo",
            "lib2to3",
            "ensurepip",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let dest = format!("usr/lib/{py}/{name}");
        if entry.file_type().unwrap().is_dir() {
            b.append_dir_all(&dest, entry.path()).unwrap();
        } else {
            b.append_path_with_name(entry.path(), &dest).unwrap();
        }
    }
    add_file(&mut b, "etc/victim.txt", b"deleted by layer 2\n");
    add_file(&mut b, "opt/old/a.txt", b"a\n");
    add_file(&mut b, "opt/old/b.txt", b"b\n");
    add_file(&mut b, "usr/share/keep.txt", b"kept\n");
    b.into_inner().unwrap()
}

/// Layer 2: a whiteout, an opaque dir with a new file, and a file written through the
/// `bin -> usr/bin` symlink of layer 1.
fn top_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "etc/.wh.victim.txt", b"");
    add_file(&mut b, "opt/old/.wh..wh..opq", b"");
    add_file(&mut b, "opt/old/c.txt", b"c\n");
    add_file(&mut b, "bin/hello.txt", b"hello\n");
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes an OCI image layout with the given layers ((media type, blob) pairs).
fn write_layout(layout: &Path, layers: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut descs = Vec::new();
    for (media_type, blob) in layers {
        let digest = put_blob(layout, blob);
        descs.push(
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": blob.len()}),
        );
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(layout, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put_blob(layout, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn build_from(
    store: &Store,
    source: &Path,
    name: &str,
) -> dsbox_rootfs::Result<dsbox_rootfs::StoreEntry> {
    let mut opts = BuildOptions::new("minimal");
    opts.base = Base::Oci(source.to_path_buf());
    opts.name = Some(name.to_string());
    opts.profiles_dir = None;
    dsbox_rootfs::build(store, &opts, &Progress::hidden()).map(|b| b.entry)
}

fn chroot_run(root: &Path, program: &str, code: &str) -> String {
    let out = Command::new("/usr/sbin/chroot")
        .arg(root)
        .args([program, "-c", code])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} in the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn check_tree(root: &Path) {
    assert!(
        !root.join("etc/victim.txt").exists(),
        "whiteout not applied"
    );
    assert!(root.join("usr/share/keep.txt").exists());
    assert!(
        !root.join("opt/old/a.txt").exists() && !root.join("opt/old/b.txt").exists(),
        "opaque dir not cleared"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("opt/old/c.txt")).unwrap(),
        "c\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("usr/bin/hello.txt")).unwrap(),
        "hello\n"
    );
    for dir in dsbox_rootfs::SANDBOX_MOUNTPOINTS {
        assert!(
            root.join(dir.trim_start_matches('/')).is_dir(),
            "{dir} missing"
        );
    }
    assert_eq!(chroot_run(root, "/usr/bin/python3", "print(6 * 7)"), "42");
    assert_eq!(
        chroot_run(
            root,
            "/opt/dsbox/env/bin/python",
            "import sys, os; print(sys.prefix, os.__file__)"
        ),
        format!("/opt/dsbox/env /usr/lib/{}/os.py", host_python())
    );
}

#[test]
fn oci_layout_with_whiteouts_imports_and_runs_python3() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[
            ("application/vnd.oci.image.layer.v1.tar", base_layer()),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                gzip(&top_layer()),
            ),
        ],
    );
    let store = Store::new(work.path().join("store"));
    let entry = build_from(&store, &layout, "img").unwrap();
    assert_eq!(entry.header.base.kind, "oci");
    let rootfs = dsbox_rootfs::open(&store, "img").unwrap();
    let RootfsLayout::Dir { root } = &rootfs.layout else {
        panic!("an OCI rootfs is a Dir layout: {:?}", rootfs.layout)
    };
    check_tree(root);
    assert!(dsbox_rootfs::verify(&store, "img").unwrap().is_clean());

    // The same image as a `docker save` tarball (Docker >= 25 writes an OCI layout in it).
    let tarball = work.path().join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    drop(b);
    let from_tar = build_from(&store, &tarball, "img-tar").unwrap();
    // Same layers, same env: the same content, stored once.
    assert_eq!(from_tar.header.content_hash, entry.header.content_hash);
    assert_eq!(from_tar.object_dir, entry.object_dir);
}

#[test]
fn legacy_docker_save_layout_imports() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("save");
    std::fs::create_dir_all(dir.join("l1")).unwrap();
    std::fs::create_dir_all(dir.join("l2")).unwrap();
    std::fs::write(dir.join("l1/layer.tar"), base_layer()).unwrap();
    std::fs::write(dir.join("l2/layer.tar"), top_layer()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["t:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    )
    .unwrap();
    let store = Store::new(work.path().join("store"));
    build_from(&store, &dir, "legacy").unwrap();
    let RootfsLayout::Dir { root } = dsbox_rootfs::open(&store, "legacy").unwrap().layout else {
        panic!("not a Dir layout")
    };
    check_tree(&root);
}

fn assert_nothing_left(store: &Store) {
    assert!(store.list().unwrap().is_empty());
    let tmp = store.root().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn path_traversal_in_a_layer_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "etc/ok.txt", b"ok\n");
    add_raw(
        &mut b,
        b"etc/../../escaped.txt",
        tar::EntryType::Regular,
        b"evil\n",
    );
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[(
            "application/vnd.oci.image.layer.v1.tar",
            b.into_inner().unwrap(),
        )],
    );
    let store = Store::new(work.path().join("store"));
    let err = build_from(&store, &layout, "evil").unwrap_err();
    assert!(matches!(err, RootfsError::OciUnsafeEntry { .. }), "{err}");
    assert!(err.to_string().contains("path traversal"), "{err}");
    assert!(!work.path().join("escaped.txt").exists());
    assert!(!store.root().join("escaped.txt").exists());
    assert_nothing_left(&store);
}

#[test]
fn device_nodes_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    add_raw(&mut b, b"dev/sda", tar::EntryType::Block, b"");
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[(
            "application/vnd.oci.image.layer.v1.tar",
            b.into_inner().unwrap(),
        )],
    );
    let store = Store::new(work.path().join("store"));
    let err = build_from(&store, &layout, "dev").unwrap_err().to_string();
    assert!(
        err.contains("dev/sda") && err.contains("device nodes are not allowed"),
        "{err}"
    );
    assert_nothing_left(&store);
}

#[test]
fn symlinks_in_a_layer_cannot_redirect_writes_outside_the_root() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Layer 1 points `etc` at a host directory; layer 2 writes through it.
    let mut l1 = tar::Builder::new(Vec::new());
    add_symlink(&mut l1, "etc", outside.to_str().unwrap());
    add_symlink(&mut l1, "up", "../../../../../..");
    let mut l2 = tar::Builder::new(Vec::new());
    add_file(&mut l2, "etc/pwned", b"x\n");
    add_file(&mut l2, "up/pwned2", b"x\n");
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[
            (
                "application/vnd.oci.image.layer.v1.tar",
                l1.into_inner().unwrap(),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                l2.into_inner().unwrap(),
            ),
        ],
    );
    dsbox_rootfs::oci::import(&layout, &root, &work.path().join("scratch")).unwrap();
    assert!(
        !outside.join("pwned").exists(),
        "a layer wrote outside the root"
    );
    assert!(!work.path().join("pwned2").exists());
    // Both landed inside the root, where the symlinks point from inside.
    let inner = root.join(outside.strip_prefix("/").unwrap()).join("pwned");
    assert!(inner.exists(), "{}", inner.display());
    assert!(root.join("pwned2").exists());
}

#[test]
fn corrupt_blob_and_not_a_layout_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[("application/vnd.oci.image.layer.v1.tar", top_layer())],
    );
    // Flip the layer blob's content.
    let blobs = layout.join("blobs/sha256");
    let layer_digest = hex(&Sha256::digest(top_layer()));
    std::fs::write(blobs.join(&layer_digest), b"tampered").unwrap();
    let store = Store::new(work.path().join("store"));
    let err = build_from(&store, &layout, "corrupt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is corrupt"), "{err}");
    assert_nothing_left(&store);

    let plain = work.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let err = build_from(&store, &plain, "plain").unwrap_err();
    assert!(matches!(err, RootfsError::NotOciLayout { .. }), "{err}");
    assert!(!store.root().join("tmp").exists() || assert_empty(&store.root().join("tmp")));
}

fn assert_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn packages_install_into_the_image_with_uv_and_with_pip() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[
            ("application/vnd.oci.image.layer.v1.tar", base_layer()),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                gzip(&top_layer()),
            ),
        ],
    );
    let store = Store::new(work.path().join("store"));
    for (installer, choice) in [
        ("uv", dsbox_rootfs::InstallerChoice::Auto),
        ("pip", dsbox_rootfs::InstallerChoice::Pip),
    ] {
        let uv_present = Command::new("uv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if installer == "uv" && !uv_present {
            continue;
        }
        let mut opts = BuildOptions::new("minimal");
        opts.base = Base::Oci(layout.clone());
        opts.name = Some(format!("with-{installer}"));
        opts.profiles_dir = None;
        opts.installer = choice;
        opts.extras = vec!["tabulate".into()];
        let built = dsbox_rootfs::build(&store, &opts, &Progress::hidden()).unwrap();
        assert!(
            built.entry.header.installer.starts_with(installer),
            "{}",
            built.entry.header.installer
        );
        assert_eq!(built.entry.header.packages.len(), 1);
        let root = built.entry.tree();
        let out = chroot_run(
            &root,
            "/opt/dsbox/env/bin/python",
            "import sys, tabulate; print(sys.prefix, tabulate.__file__)",
        );
        assert!(
            out.starts_with(&format!(
                "/opt/dsbox/env /opt/dsbox/env/lib/{}/site-packages/tabulate/",
                host_python()
            )),
            "{out}"
        );
        // The console script runs inside the image too.
        let script = std::fs::read_to_string(root.join("opt/dsbox/env/bin/tabulate")).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            !root
                .join(format!(
                    "opt/dsbox/env/lib/{}/site-packages/bin",
                    host_python()
                ))
                .exists()
        );
    }
}
