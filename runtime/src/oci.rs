//! Build a [`SandboxSpec`] from an OCI runtime-spec bundle (`config.json`), so existing
//! bundles run. The file is first checked against the OCI schema (oci-spec's types), then
//! every field present is compared with the list dsbox honours; anything else is one clear
//! error naming the field. The list is in docs/runtime.md.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::{
    Mount, Network, ProcessSpec, Rlimit, RlimitResource, Root, SandboxSpec, parse_size,
};

/// Errors reading an OCI bundle.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a valid OCI runtime config: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("OCI field `{field}` is not supported by dsbox: {hint}")]
    Unsupported { field: String, hint: &'static str },
    #[error("OCI field `{field}` is invalid: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
}

type Result<T> = std::result::Result<T, OciError>;

const REMOVE: &str =
    "remove it from config.json (see docs/runtime.md for the fields dsbox honours)";

fn unsupported(field: impl Into<String>) -> OciError {
    OciError::Unsupported {
        field: field.into(),
        hint: REMOVE,
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> OciError {
    OciError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn check_keys(obj: &Value, prefix: &str, allowed: &[&str]) -> Result<()> {
    if let Some(map) = obj.as_object() {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(unsupported(format!("{prefix}{key}")));
            }
        }
    }
    Ok(())
}

fn as_u64(v: &Value, field: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| invalid(field, "expected a non-negative integer"))
}

/// Read `<bundle>/config.json` into a spec.
pub fn from_bundle(bundle: &Path) -> Result<SandboxSpec> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|error| OciError::Read {
        path: path.clone(),
        error,
    })?;
    from_config(&text, bundle, &path)
}

/// Parse config.json text; relative paths are resolved against `bundle`.
pub fn from_config(text: &str, bundle: &Path, path: &Path) -> Result<SandboxSpec> {
    let parse_err = |e: serde_json::Error| OciError::Parse {
        path: path.into(),
        message: e.to_string(),
    };
    let value: Value = serde_json::from_str(text).map_err(parse_err)?;
    // Schema check with oci-spec's types (wrong types, bad enum values, ...).
    serde_json::from_value::<oci_spec::runtime::Spec>(value.clone()).map_err(parse_err)?;

    check_keys(
        &value,
        "",
        &[
            "ociVersion",
            "root",
            "process",
            "hostname",
            "mounts",
            "linux",
            "annotations",
        ],
    )?;
    let mut spec = SandboxSpec::default();

    let root = value
        .get("root")
        .ok_or_else(|| invalid("root", "missing: give root.path"))?;
    check_keys(root, "root.", &["path", "readonly"])?;
    let root_path = root
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("root.path", "missing"))?;
    if root.get("readonly").and_then(Value::as_bool) == Some(false) {
        return Err(invalid(
            "root.readonly",
            "dsbox mounts the root read-only; set it to true or remove it",
        ));
    }
    let root_path = bundle.join(root_path);
    spec.root = Root::Dir(root_path);

    if let Some(process) = value.get("process") {
        check_keys(
            process,
            "process.",
            &[
                "terminal",
                "user",
                "args",
                "env",
                "cwd",
                "rlimits",
                "noNewPrivileges",
            ],
        )?;
        if process.get("terminal").and_then(Value::as_bool) == Some(true) {
            return Err(invalid(
                "process.terminal",
                "dsbox has no terminal support; set it to false",
            ));
        }
        let mut p = ProcessSpec {
            args: process
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            ..ProcessSpec::default()
        };
        if p.args.is_empty() {
            return Err(invalid(
                "process.args",
                "missing or empty: give the command",
            ));
        }
        for entry in process
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = entry.as_str().unwrap_or_default();
            let (k, v) = crate::spec::parse_env(s)
                .map_err(|_| invalid("process.env", format!("`{s}` is not KEY=VALUE")))?;
            p.env.push((k, v));
        }
        if let Some(cwd) = process.get("cwd").and_then(Value::as_str) {
            p.cwd = PathBuf::from(cwd);
        }
        if let Some(user) = process.get("user") {
            check_keys(user, "process.user.", &["uid", "gid", "additionalGids"])?;
            if user
                .get("additionalGids")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                return Err(unsupported("process.user.additionalGids"));
            }
            if let Some(uid) = user.get("uid") {
                p.uid = as_u64(uid, "process.user.uid")? as u32;
            }
            if let Some(gid) = user.get("gid") {
                p.gid = as_u64(gid, "process.user.gid")? as u32;
            }
        }
        if let Some(rlimits) = process.get("rlimits").and_then(Value::as_array) {
            for (i, rl) in rlimits.iter().enumerate() {
                let field = format!("process.rlimits[{i}]");
                let typ = rl.get("type").and_then(Value::as_str).unwrap_or_default();
                let resource = RlimitResource::from_oci(typ)
                    .ok_or_else(|| invalid(&field, format!("unknown rlimit type `{typ}`")))?;
                let soft = as_u64(rl.get("soft").unwrap_or(&Value::Null), &field)?;
                let hard = as_u64(rl.get("hard").unwrap_or(&Value::Null), &field)?;
                spec.limits.rlimits.retain(|r| r.resource != resource);
                spec.limits.rlimits.push(Rlimit {
                    resource,
                    soft,
                    hard,
                });
            }
        }
        if let Some(nnp) = process.get("noNewPrivileges").and_then(Value::as_bool) {
            spec.no_new_privs = nnp;
        }
        spec.process = Some(p);
    }

    if let Some(h) = value.get("hostname").and_then(Value::as_str) {
        spec.hostname = h.to_owned();
    }

    for (i, m) in value
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("mounts[{i}]");
        check_keys(
            m,
            &format!("{field}."),
            &["destination", "type", "source", "options"],
        )?;
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let typ = m.get("type").and_then(Value::as_str).unwrap_or("bind");
        let options: Vec<&str> = m
            .get("options")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_bind = typ == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
        match (typ, dest) {
            // dsbox always mounts its own /proc and /dev.
            ("proc", "/proc") | ("tmpfs", "/dev") => {}
            ("tmpfs", "/dev/shm") => {}
            _ if is_bind => {
                let source = m
                    .get("source")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{field}.source"), "missing"))?;
                spec.mounts.push(Mount::Bind {
                    source: bundle.join(source),
                    destination: PathBuf::from(dest),
                    readonly: options.contains(&"ro"),
                });
            }
            ("tmpfs", _) => {
                let size = options
                    .iter()
                    .find_map(|o| o.strip_prefix("size="))
                    .map(|s| {
                        parse_size(s)
                            .map_err(|e| invalid(format!("{field}.options"), e.to_string()))
                    })
                    .transpose()?;
                spec.mounts.push(Mount::Tmpfs {
                    destination: PathBuf::from(dest),
                    size,
                });
            }
            _ => {
                return Err(OciError::Unsupported {
                    field: format!("{field} (type {typ} at {dest})"),
                    hint: "dsbox supports bind, tmpfs and proc mounts; remove it from config.json",
                });
            }
        }
    }

    if let Some(linux) = value.get("linux") {
        check_keys(linux, "linux.", &["resources", "namespaces"])?;
        if let Some(res) = linux.get("resources") {
            check_keys(
                res,
                "linux.resources.",
                &["memory", "pids", "cpu", "devices"],
            )?;
            if let Some(devices) = res.get("devices").and_then(Value::as_array)
                && devices
                    .iter()
                    .any(|d| d.get("allow").and_then(Value::as_bool) != Some(false))
            {
                return Err(OciError::Unsupported {
                    field: "linux.resources.devices".into(),
                    hint: "dsbox gives every sandbox only null, zero, full, random and urandom; keep only deny rules",
                });
            }
            if let Some(mem) = res.get("memory") {
                check_keys(mem, "linux.resources.memory.", &["limit", "swap"])?;
                if let Some(limit) = mem.get("limit").and_then(Value::as_i64)
                    && limit > 0
                {
                    spec.limits.memory = Some(limit as u64);
                }
            }
            if let Some(pids) = res.get("pids") {
                check_keys(pids, "linux.resources.pids.", &["limit"])?;
                if let Some(limit) = pids.get("limit").and_then(Value::as_i64)
                    && limit > 0
                {
                    spec.limits.pids = Some(limit as u64);
                }
            }
            if let Some(cpu) = res.get("cpu") {
                check_keys(cpu, "linux.resources.cpu.", &["quota", "period"])?;
                let quota = cpu.get("quota").and_then(Value::as_i64);
                let period = cpu.get("period").and_then(Value::as_u64).unwrap_or(100_000);
                if let Some(q) = quota
                    && q > 0
                    && period > 0
                {
                    spec.limits.cpus = Some(q as f64 / period as f64);
                }
            }
        }
        if let Some(nss) = linux.get("namespaces").and_then(Value::as_array) {
            let mut types = Vec::new();
            for (i, ns) in nss.iter().enumerate() {
                check_keys(ns, &format!("linux.namespaces[{i}]."), &["type"])?;
                types.push(ns.get("type").and_then(Value::as_str).unwrap_or_default());
            }
            spec.namespaces.pid = types.contains(&"pid");
            spec.namespaces.user = types.contains(&"user");
            spec.network = if types.contains(&"network") {
                Network::None
            } else {
                Network::Host
            };
        }
    }
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> (tempfile::TempDir, Result<SandboxSpec>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let r = from_bundle(dir.path());
        (dir, r)
    }

    const GOOD: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": true},
        "process": {"args": ["/bin/echo", "hi"], "env": ["A=1"], "cwd": "/tmp",
                    "user": {"uid": 1000, "gid": 1000},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}],
                    "noNewPrivileges": true},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=64m"]}],
        "linux": {"resources": {"memory": {"limit": 268435456}, "pids": {"limit": 32},
                                "cpu": {"quota": 50000, "period": 100000}},
                  "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]}
    }"#;

    #[test]
    fn honoured_fields_map_onto_the_spec() {
        let (dir, spec) = bundle(GOOD);
        let spec = spec.unwrap();
        assert_eq!(spec.root, Root::Dir(dir.path().join("rootfs")));
        let p = spec.process.as_ref().unwrap();
        assert_eq!(p.args, vec!["/bin/echo", "hi"]);
        assert_eq!(p.cwd, Path::new("/tmp"));
        assert_eq!(spec.hostname, "box");
        assert_eq!(spec.limits.memory, Some(256 << 20));
        assert_eq!(spec.limits.pids, Some(32));
        assert_eq!(spec.limits.cpus, Some(0.5));
        assert!(spec.namespaces.pid);
        assert_eq!(spec.network, Network::None);
        assert!(spec.limits.rlimits.contains(&Rlimit {
            resource: RlimitResource::Nofile,
            soft: 64,
            hard: 64
        }));
        assert_eq!(
            spec.mounts,
            vec![Mount::Tmpfs {
                destination: "/scratch".into(),
                size: Some(64 << 20)
            }]
        );
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cfg = GOOD.replace(
            "\"hostname\": \"box\",",
            "\"hostname\": \"box\", \"hooks\": {},",
        );
        let (_d, r) = bundle(&cfg);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("`hooks`"), "{err}");

        let cfg = GOOD.replace(
            r#"{"type": "mount"}"#,
            r#"{"type": "mount", "path": "/proc/1/ns/mnt"}"#,
        );
        let (_d, r) = bundle(&cfg);
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("linux.namespaces[1].path")
        );

        let cfg = GOOD.replace(
            r#""type": "proc", "source": "proc""#,
            r#""type": "sysfs", "source": "sysfs""#,
        );
        let (_d, r) = bundle(&cfg);
        assert!(r.unwrap_err().to_string().contains("mounts[0]"));
    }

    #[test]
    fn malformed_configs_fail_with_the_path() {
        let (_d, r) = bundle("{ not json");
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("not a valid OCI runtime config"),
            "{err}"
        );
        let (_d, r) = bundle(
            r#"{"ociVersion": "1.0.2", "process": {"args": "oops"}, "root": {"path": "rootfs"}}"#,
        );
        assert!(matches!(r, Err(OciError::Parse { .. })));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            from_bundle(dir.path()),
            Err(OciError::Read { .. })
        ));
    }
}
