//! Container Device Interface (CDI): devices a sandbox gets, as the vendor's tools describe
//! them (`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`).
//!
//! Contract:
//! - [`Catalog::load`] reads every `*.yaml`, `*.yml` and `*.json` file directly in the spec
//!   directories (default [`DEFAULT_SPEC_DIRS`]; a later directory's device replaces an
//!   earlier one of the same name) and keeps the devices of one kind (e.g. [`GPU_KIND`]).
//!   Files of other kinds are skipped unread beyond their `kind`. A file of the kind that
//!   does not parse (unknown fields included), is writable by anyone but root (its hooks run as
//!   root), or holds an edit that would break a sandbox's isolation is an error naming the
//!   file, the device and the problem: a mount of `/`, of the data dir or of a directory above
//!   it, a container path over `/proc`, `/sys` or Cove's own mounts, relative or `..` paths,
//!   hooks without an absolute path, and the edits Cove cannot apply (`netDevices`, `intelRdt`).
//! - [`Catalog::edits_for`] gathers the edits for some devices: each involved spec's own
//!   `containerEdits` once, then each device's.
//! - [`apply`] writes edits into a sandbox's OCI `config.json`: env (replacing the same
//!   keys), device nodes (type and major/minor from the host node when the spec leaves them
//!   out; a cgroup allow rule each; bind-mounted from the host when the sandbox is in a user
//!   namespace, where nodes cannot be made, else `linux.devices`), bind mounts (always
//!   `nosuid`), hooks by their OCI name, and `additionalGids`. Capabilities, namespaces,
//!   seccomp and masked paths are never touched: a sandbox with devices stays unprivileged.
//!
//! A sandbox without devices gets no edits at all (callers do not call [`apply`]).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::userns::IdRange;

/// The kind of NVIDIA GPUs in CDI specs.
pub const GPU_KIND: &str = "nvidia.com/gpu";
/// Where CDI specs live unless configured otherwise (`/var/run/cdi` wins over `/etc/cdi`).
pub const DEFAULT_SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];
/// The device name CDI tools give to "every device of the kind": not one GPU.
pub const ALL_DEVICES: &str = "all";
/// Hooks a CDI spec may name (OCI runtime spec hook names).
const HOOK_NAMES: &[&str] =
    &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];
/// Container paths CDI edits may not cover: the kernel's views and Cove's own mounts.
const RESERVED_CONTAINER_PATHS: &[&str] = &["/proc", "/sys", crate::oci::TOOLBOX_DIR, "/.cove"];

/// A CDI spec that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A spec directory could not be listed.
    #[error("list CDI spec directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A spec file could not be read.
    #[error("read CDI spec {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A spec file is not valid CDI.
    #[error("parse CDI spec {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A spec file anyone but root may change: its hooks would run as root.
    #[error("CDI spec {path} is {why}; its hooks run as root, so only root may write it (chown root and chmod go-w)")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An edit Cove refuses.
    #[error("CDI spec {path}, {device}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `device NAME` or `spec-level edits`.
        device: String,
        /// What is wrong.
        why: String,
    },
    /// A device name the catalog does not have.
    #[error("no CDI device {kind}={name}")]
    UnknownDevice {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// A device node's host node cannot be used.
    #[error("CDI device node {path}: host node {host}: {why}")]
    HostNode {
        /// Path in the sandbox.
        path: String,
        /// Path on the host.
        host: String,
        /// What is wrong.
        why: String,
    },
    /// An additional group the sandbox's user namespace does not map.
    #[error("CDI additional group {gid} is outside the sandbox's {count} ids")]
    UnmappedGid {
        /// The group.
        gid: u32,
        /// Ids the sandbox has.
        count: u32,
    },
}

/// `null` reads as the default (JSON specs may write `"env": null`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `containerEdits` of a spec or a device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `K=V` entries.
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, deserialize_with = "nullable")]
    pub device_nodes: Vec<DeviceNode>,
    /// OCI hooks.
    #[serde(default, deserialize_with = "nullable")]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default, deserialize_with = "nullable")]
    pub mounts: Vec<Mount>,
    /// Supplementary groups of the sandbox's process.
    #[serde(default, deserialize_with = "nullable")]
    pub additional_gids: Vec<u32>,
    /// Network devices moved into the container: not supported (refused when set).
    #[serde(default)]
    net_devices: Option<Value>,
    /// Intel RDT: not supported (refused when set).
    #[serde(default)]
    intel_rdt: Option<Value>,
}

/// A `deviceNodes` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path in the sandbox.
    pub path: String,
    /// Path on the host (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `u` (character) or `b` (block); from the host node when absent.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// From the host node when absent.
    #[serde(default)]
    pub major: Option<i64>,
    /// From the host node when absent.
    #[serde(default)]
    pub minor: Option<i64>,
    /// Mode of the node made (privileged sandboxes; a bind-mounted node keeps the host's).
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// cgroup access, a subset of `rwm` (default `rwm`).
    #[serde(default)]
    pub permissions: Option<String>,
    /// Owner of the node made (privileged sandboxes).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group of the node made (privileged sandboxes).
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A `mounts` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Source on the host.
    pub host_path: String,
    /// Destination in the sandbox.
    pub container_path: String,
    /// Only `bind` (the default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Mount options (`ro`, `nosuid`, …).
    #[serde(default, deserialize_with = "nullable")]
    pub options: Vec<String>,
}

/// A `hooks` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// OCI hook name (`createContainer`, …).
    pub hook_name: String,
    /// Absolute path of the program.
    pub path: String,
    /// Its arguments (`argv[0]` first).
    #[serde(default, deserialize_with = "nullable")]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceDef {
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    #[allow(dead_code)] // metadata for orchestrators, nothing to apply
    annotations: BTreeMap<String, String>,
    container_edits: ContainerEdits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecFile {
    cdi_version: String,
    #[allow(dead_code)] // read through `KindOnly` first
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    #[allow(dead_code)] // metadata for orchestrators, nothing to apply
    annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    devices: Vec<DeviceDef>,
    #[serde(default)]
    container_edits: Option<ContainerEdits>,
}

/// Only the kind, to skip other vendors' files without judging their fields.
#[derive(Deserialize)]
struct KindOnly {
    kind: String,
}

/// One device of the catalog's kind.
#[derive(Debug, Clone)]
struct Device {
    name: String,
    /// Index into `Catalog::specs`.
    spec: usize,
    edits: ContainerEdits,
}

/// The spec-level part of one file.
#[derive(Debug, Clone)]
struct Spec {
    path: PathBuf,
    edits: ContainerEdits,
}

/// The devices of one kind found in the spec directories.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    kind: String,
    specs: Vec<Spec>,
    devices: Vec<Device>,
}

impl Catalog {
    /// An empty catalog (no devices).
    pub fn empty(kind: &str) -> Self {
        Catalog { kind: kind.to_string(), ..Default::default() }
    }

    /// Reads the specs of `kind` in `dirs` (missing directories are fine). `protected`: host
    /// paths no mount may expose (the data dir, runc's state).
    pub fn load(dirs: &[PathBuf], kind: &str, protected: &[PathBuf]) -> Result<Self, CdiError> {
        let mut cat = Catalog::empty(kind);
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CdiError::ReadDir { path: dir.clone(), source }),
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            files.sort();
            for path in files {
                cat.add_file(&path, protected)?;
            }
        }
        Ok(cat)
    }

    fn add_file(&mut self, path: &Path, protected: &[PathBuf]) -> Result<(), CdiError> {
        let read = |source| CdiError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let parse = |source| CdiError::Parse { path: path.to_path_buf(), source };
        // JSON is YAML: one parser for both.
        let kind: KindOnly = serde_yaml_ng::from_str(&text).map_err(parse)?;
        if kind.kind != self.kind {
            return Ok(());
        }
        let unsafe_file = |why: String| CdiError::Unsafe { path: path.to_path_buf(), why };
        if meta.uid() != 0 && meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(unsafe_file(format!("owned by uid {}", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_file(format!("mode {:o}, writable by group or others", meta.mode() & 0o7777)));
        }
        let spec: SpecFile = serde_yaml_ng::from_str(&text).map_err(parse)?;
        if spec.cdi_version.trim().is_empty() {
            let why = "cdiVersion is empty".to_string();
            return Err(CdiError::Invalid { path: path.to_path_buf(), device: "spec".into(), why });
        }
        let edits = spec.container_edits.unwrap_or_default();
        validate(&edits, protected).map_err(|why| CdiError::Invalid {
            path: path.to_path_buf(),
            device: "spec-level edits".into(),
            why,
        })?;
        let index = self.specs.len();
        let mut names = Vec::new();
        for d in spec.devices {
            let invalid =
                |why: String| CdiError::Invalid { path: path.to_path_buf(), device: format!("device {}", d.name), why };
            if !valid_device_name(&d.name) {
                return Err(invalid(
                    "device names are letters, digits, '_', '.', ':' and '-', first a letter or digit".into(),
                ));
            }
            if names.contains(&d.name) {
                return Err(invalid("the name appears twice in the file".into()));
            }
            validate(&d.container_edits, protected).map_err(invalid)?;
            names.push(d.name.clone());
            // A later directory's device of the same name replaces the earlier one.
            self.devices.retain(|x| x.name != d.name);
            self.devices.push(Device { name: d.name, spec: index, edits: d.container_edits });
        }
        self.specs.push(Spec { path: path.to_path_buf(), edits });
        Ok(())
    }

    /// Every device name, in spec order.
    pub fn names(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.name.clone()).collect()
    }

    /// One name per physical device: `all` left out, and names whose device nodes are the
    /// same set (`0` and `GPU-<uuid>` for one GPU) counted once, under the first of them.
    pub fn units(&self) -> Vec<String> {
        let mut seen: Vec<Vec<String>> = Vec::new();
        let mut out = Vec::new();
        for d in self.devices.iter().filter(|d| d.name != ALL_DEVICES) {
            let mut nodes: Vec<String> = d.edits.device_nodes.iter().map(|n| n.path.clone()).collect();
            nodes.sort();
            if !nodes.is_empty() && seen.contains(&nodes) {
                continue;
            }
            seen.push(nodes);
            out.push(d.name.clone());
        }
        out
    }

    /// The edits for `names`: the spec-level edits of each spec involved (once, in spec
    /// order), then each device's in the order given.
    pub fn edits_for(&self, names: &[String]) -> Result<ContainerEdits, CdiError> {
        let mut devices = Vec::new();
        for n in names {
            let d = self
                .devices
                .iter()
                .find(|d| &d.name == n)
                .ok_or_else(|| CdiError::UnknownDevice { kind: self.kind.clone(), name: n.clone() })?;
            devices.push(d);
        }
        let mut specs: Vec<usize> = devices.iter().map(|d| d.spec).collect();
        specs.sort();
        specs.dedup();
        let mut all = ContainerEdits::default();
        for s in specs {
            all.append(&self.specs[s].edits);
        }
        for d in devices {
            all.append(&d.edits);
        }
        Ok(all)
    }

    /// The spec files the devices came from (for logs).
    pub fn files(&self) -> Vec<PathBuf> {
        self.specs.iter().map(|s| s.path.clone()).collect()
    }
}

impl ContainerEdits {
    /// Adds `other`'s edits after these; exact duplicates (the same node, mount, hook or
    /// group from two devices) are kept once.
    pub fn append(&mut self, other: &ContainerEdits) {
        fn extend<T: PartialEq + Clone>(into: &mut Vec<T>, from: &[T]) {
            for x in from {
                if !into.contains(x) {
                    into.push(x.clone());
                }
            }
        }
        self.env.extend(other.env.iter().cloned());
        extend(&mut self.device_nodes, &other.device_nodes);
        extend(&mut self.hooks, &other.hooks);
        extend(&mut self.mounts, &other.mounts);
        extend(&mut self.additional_gids, &other.additional_gids);
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
            && self.additional_gids.is_empty()
    }
}

fn valid_device_name(n: &str) -> bool {
    n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// An absolute path without `.`, `..` or empty components, other than `/` itself.
fn clean_absolute(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) || p.contains("//") || p.contains('\0') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if !comps.all(|c| matches!(c, Component::Normal(_))) || p.ends_with("/.") {
        return Err(format!("{p:?} has '.' or '..' components"));
    }
    if path == Path::new("/") {
        return Err("'/' itself may not be used".into());
    }
    Ok(path)
}

fn valid_env(e: &str) -> Result<(), String> {
    match e.split_once('=') {
        Some((k, _)) if !k.is_empty() && !e.contains('\0') => Ok(()),
        _ => Err(format!("environment entry {e:?} is not K=V")),
    }
}

/// Whether `host` is, is below or is above one of `protected` (resolved through links).
fn exposes_protected(host: &Path, protected: &[PathBuf]) -> Option<PathBuf> {
    let host = std::fs::canonicalize(host).unwrap_or_else(|_| host.to_path_buf());
    protected.iter().find_map(|p| {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        (host.starts_with(&p) || p.starts_with(&host)).then_some(p)
    })
}

/// The checks every edit passes at load.
fn validate(e: &ContainerEdits, protected: &[PathBuf]) -> Result<(), String> {
    if e.net_devices.as_ref().is_some_and(|v| !v.is_null()) {
        return Err("netDevices edits are not supported by Cove".into());
    }
    if e.intel_rdt.as_ref().is_some_and(|v| !v.is_null()) {
        return Err("intelRdt edits are not supported by Cove".into());
    }
    for env in &e.env {
        valid_env(env)?;
    }
    let reserved = |dest: &Path| RESERVED_CONTAINER_PATHS.iter().find(|r| dest.starts_with(r)).copied();
    for n in &e.device_nodes {
        let dest = clean_absolute(&n.path).map_err(|w| format!("device node path: {w}"))?;
        if let Some(r) = reserved(dest) {
            return Err(format!("device node {} would cover {r}", n.path));
        }
        if let Some(h) = &n.host_path {
            let host = clean_absolute(h).map_err(|w| format!("device node hostPath: {w}"))?;
            if let Some(p) = exposes_protected(host, protected) {
                return Err(format!("device node hostPath {h} is within or above {}", p.display()));
            }
        }
        if let Some(t) = &n.kind
            && !matches!(t.as_str(), "c" | "u" | "b")
        {
            return Err(format!("device node {} has type {t:?}; only c, u and b are supported", n.path));
        }
        if let Some(p) = &n.permissions
            && (p.is_empty() || !p.chars().all(|c| "rwm".contains(c)))
        {
            return Err(format!("device node {} has permissions {p:?}; expected a subset of rwm", n.path));
        }
        if n.major.is_some_and(|m| m < 0) || n.minor.is_some_and(|m| m < 0) || n.major.is_some() != n.minor.is_some() {
            return Err(format!("device node {} needs both major and minor, not negative, or neither", n.path));
        }
    }
    for m in &e.mounts {
        let dest = clean_absolute(&m.container_path).map_err(|w| format!("mount containerPath: {w}"))?;
        if let Some(r) = reserved(dest) {
            return Err(format!("mount {} would cover {r}", m.container_path));
        }
        let host = clean_absolute(&m.host_path).map_err(|w| format!("mount hostPath: {w}"))?;
        if let Some(p) = exposes_protected(host, protected) {
            return Err(format!("mount of {} would expose {}", m.host_path, p.display()));
        }
        if let Some(t) = m.kind.as_deref().filter(|t| *t != "bind") {
            return Err(format!("mount {} has type {t:?}; only bind mounts are supported", m.container_path));
        }
    }
    for h in &e.hooks {
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(format!("hook name {:?} is not one of {}", h.hook_name, HOOK_NAMES.join(", ")));
        }
        clean_absolute(&h.path).map_err(|w| format!("hook path: {w}"))?;
        for env in &h.env {
            valid_env(env).map_err(|w| format!("hook {}: {w}", h.path))?;
        }
        if h.timeout.is_some_and(|t| t <= 0) {
            return Err(format!("hook {} has a timeout that is not positive", h.path));
        }
    }
    Ok(())
}

/// How the sandbox the edits go to runs.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The sandbox's user namespace; `None` for privileged sandboxes (host root).
    pub idmap: Option<IdRange>,
}

/// Type, major and minor of a node: the spec's, else the host node's.
fn resolve_node(n: &DeviceNode) -> Result<(String, i64, i64), CdiError> {
    let host = n.host_path.clone().unwrap_or_else(|| n.path.clone());
    let bad = |why: String| CdiError::HostNode { path: n.path.clone(), host: host.clone(), why };
    if let (Some(t), Some(major), Some(minor)) = (&n.kind, n.major, n.minor) {
        return Ok((if t == "u" { "c".into() } else { t.clone() }, major, minor));
    }
    let meta = std::fs::metadata(&host).map_err(|e| bad(e.to_string()))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(bad("not a character or block device".into()));
    };
    if let Some(t) = &n.kind
        && (t == "b") != (kind == "b")
    {
        return Err(bad(format!("the spec says type {t}, the host node is {kind}")));
    }
    let rdev = meta.rdev();
    let (major, minor) = match (n.major, n.minor) {
        (Some(a), Some(b)) => (a, b),
        _ => (i64::from(rustix::fs::major(rdev)), i64::from(rustix::fs::minor(rdev))),
    };
    Ok((kind.to_string(), major, minor))
}

/// Writes `edits` into the OCI `config` of a sandbox (see the module contract).
pub fn apply(config: &mut Value, edits: &ContainerEdits, target: Target) -> Result<(), CdiError> {
    if let Some(r) = target.idmap
        && let Some(gid) = edits.additional_gids.iter().find(|g| **g >= r.count)
    {
        return Err(CdiError::UnmappedGid { gid: *gid, count: r.count });
    }
    let mut nodes = Vec::new();
    for n in &edits.device_nodes {
        nodes.push((n, resolve_node(n)?));
    }

    let mut env: Vec<String> = serde_json::from_value(config["process"]["env"].take()).unwrap_or_default();
    crate::oci::merge_env(&mut env, &edits.env);
    config["process"]["env"] = json!(env);

    for (n, (kind, major, minor)) in nodes {
        let host = n.host_path.clone().unwrap_or_else(|| n.path.clone());
        let access = n.permissions.clone().unwrap_or_else(|| "rwm".into());
        push(
            &mut config["linux"]["resources"]["devices"],
            json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access}),
        );
        if target.idmap.is_some() {
            // No mknod in a user namespace: the host's node, bound over an empty file. It keeps
            // the host's owner and mode; the cgroup rule above lets the sandbox open it.
            if let Ok(m) = std::fs::metadata(&host)
                && m.mode() & 0o006 != 0o006
            {
                tracing::warn!(node = %host, mode = format!("{:o}", m.mode() & 0o7777),
                    "a CDI device node is not readable and writable by others: the sandbox's users may not open it");
            }
            push(
                &mut config["mounts"],
                json!({"destination": n.path, "type": "bind", "source": host, "options": ["bind", "nosuid", "rw"]}),
            );
        } else {
            let mut dev = json!({"path": n.path, "type": kind, "major": major, "minor": minor});
            for (key, v) in [("fileMode", n.file_mode), ("uid", n.uid), ("gid", n.gid)] {
                if let Some(v) = v {
                    dev[key] = json!(v);
                }
            }
            push(&mut config["linux"]["devices"], dev);
        }
    }

    for m in &edits.mounts {
        let mut options = m.options.clone();
        if !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("bind".into());
        }
        if !options.iter().any(|o| o == "nosuid") {
            options.push("nosuid".into());
        }
        push(
            &mut config["mounts"],
            json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": options}),
        );
    }

    for h in &edits.hooks {
        let mut hook = json!({"path": h.path});
        if !h.args.is_empty() {
            hook["args"] = json!(h.args);
        }
        if !h.env.is_empty() {
            hook["env"] = json!(h.env);
        }
        if let Some(t) = h.timeout {
            hook["timeout"] = json!(t);
        }
        push(&mut config["hooks"][h.hook_name.as_str()], hook);
    }

    if !edits.additional_gids.is_empty() {
        let user = &mut config["process"]["user"]["additionalGids"];
        let mut gids: Vec<u32> = serde_json::from_value(user.take()).unwrap_or_default();
        for g in &edits.additional_gids {
            if !gids.contains(g) {
                gids.push(*g);
            }
        }
        *user = json!(gids);
    }
    Ok(())
}

/// Appends to the array at `slot` (made when absent).
fn push(slot: &mut Value, v: Value) {
    if !slot.is_array() {
        *slot = json!([]);
    }
    if let Some(a) = slot.as_array_mut() {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Writes `name` in `dir` as root-owned 0644 (what nvidia-ctk writes).
    fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    const NVIDIA: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: GPU-6f1b2c3d
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: /dev/zero
      permissions: rw
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
    - path: /dev/nvidia1
      hostPath: /dev/zero
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: /dev/full
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
    env: [NVIDIA_CTK_DEBUG=false]
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu
    containerPath: /usr/lib/x86_64-linux-gnu/nvidia
    options: [ro, nosuid, nodev, bind]
  additionalGids: [44]
"#;

    fn catalog(text: &str) -> Result<Catalog, CdiError> {
        let dir = tempfile::tempdir().unwrap();
        write_spec(dir.path(), "nvidia.yaml", text);
        Catalog::load(&[dir.path().to_path_buf()], GPU_KIND, &[PathBuf::from("/var/lib/cove-data")])
    }

    fn base_config() -> Value {
        json!({
            "process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"], "user": {"uid": 0, "gid": 0},
                        "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
                      "namespaces": [{"type": "user"}]},
            "hooks": {"createRuntime": [{"path": "/net-hook"}]},
        })
    }

    const USERNS: Target = Target { idmap: Some(IdRange { start: 100_000, count: 65536 }) };

    #[test]
    fn gpus_are_the_devices_of_the_kind_without_all_and_without_second_names_for_one_gpu() {
        let cat = catalog(NVIDIA).unwrap();
        assert_eq!(cat.names(), ["0", "GPU-6f1b2c3d", "1", "all"]);
        assert_eq!(cat.units(), ["0", "1"]);
    }

    #[test]
    fn a_json_spec_reads_like_a_yaml_one_and_other_kinds_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(
            dir.path(),
            "gpu.json",
            r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"0","containerEdits":{"env":["A=1"],"mounts":null}}]}"#,
        );
        // Another vendor's file, with fields Cove does not know: not ours to judge.
        write_spec(dir.path(), "other.yaml", "cdiVersion: 0.6.0\nkind: vendor.com/fpga\nfuture: 1\ndevices: []\n");
        write_spec(dir.path(), "notes.txt", "not a spec");
        let cat = Catalog::load(&[dir.path().to_path_buf(), dir.path().join("missing")], GPU_KIND, &[]).unwrap();
        assert_eq!(cat.units(), ["0"]);
        assert_eq!(cat.edits_for(&["0".into()]).unwrap().env, ["A=1"]);
    }

    #[test]
    fn a_later_directory_replaces_a_device_of_the_same_name() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let spec = |v: &str| {
            format!(
                "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: '0'\n  containerEdits:\n    env: [V={v}]\n"
            )
        };
        write_spec(a.path(), "a.yaml", &spec("etc"));
        write_spec(b.path(), "b.yaml", &spec("run"));
        let cat = Catalog::load(&[a.path().into(), b.path().into()], GPU_KIND, &[]).unwrap();
        assert_eq!(cat.units(), ["0"]);
        assert_eq!(cat.edits_for(&["0".into()]).unwrap().env, ["V=run"]);
    }

    #[test]
    fn edits_for_devices_put_the_spec_level_edits_first_and_once() {
        let cat = catalog(NVIDIA).unwrap();
        let e = cat.edits_for(&["0".into(), "1".into()]).unwrap();
        let nodes: Vec<&str> = e.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(nodes, ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]);
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        assert_eq!(e.hooks.len(), 1);
        assert!(matches!(cat.edits_for(&["7".into()]), Err(CdiError::UnknownDevice { name, .. }) if name == "7"));
    }

    #[test]
    fn an_unprivileged_sandbox_gets_bound_host_nodes_with_cgroup_rules_env_mounts_hooks_and_groups() {
        let cat = catalog(NVIDIA).unwrap();
        let mut c = base_config();
        apply(&mut c, &cat.edits_for(&["1".into()]).unwrap(), USERNS).unwrap();

        let env = c["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("NVIDIA_VISIBLE_DEVICES=void")), "the spec's value replaces the image's: {env:?}");
        assert!(!env.contains(&json!("NVIDIA_VISIBLE_DEVICES=all")));

        let rules = c["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}), "deny-all stays first");
        // /dev/full is 1:7 and /dev/zero 1:5 on Linux; permissions default to rwm.
        assert_eq!(rules[1], json!({"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"}));
        assert_eq!(rules[2], json!({"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}));
        assert!(c["linux"].get("devices").is_none(), "no mknod in a user namespace");

        let mounts = c["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap_or_else(|| panic!("{d}"));
        assert_eq!(find("/dev/nvidia1")["source"], "/dev/zero");
        assert_eq!(find("/dev/nvidia1")["options"], json!(["bind", "nosuid", "rw"]));
        assert_eq!(find("/dev/nvidiactl")["source"], "/dev/full");
        let lib = find("/usr/lib/x86_64-linux-gnu/nvidia");
        assert_eq!(lib["options"], json!(["ro", "nosuid", "nodev", "bind"]));
        assert_eq!(mounts[0]["destination"], "/proc", "edits come after the sandbox's own mounts");

        assert_eq!(c["hooks"]["createRuntime"], json!([{"path": "/net-hook"}]), "the network hook stays");
        assert_eq!(
            c["hooks"]["createContainer"],
            json!([{"path": "/usr/bin/nvidia-cdi-hook",
                    "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu"],
                    "env": ["NVIDIA_CTK_DEBUG=false"]}])
        );
        assert_eq!(c["process"]["user"]["additionalGids"], json!([44]));
        // Nothing that makes a sandbox privileged.
        assert_eq!(c["process"]["capabilities"], base_config()["process"]["capabilities"]);
        assert_eq!(c["linux"]["namespaces"], json!([{"type": "user"}]));
    }

    #[test]
    fn a_privileged_sandbox_gets_device_entries_made_with_the_specs_mode_and_owner() {
        let edits: ContainerEdits = serde_yaml_ng::from_str(
            "deviceNodes:\n- {path: /dev/nvidia0, type: c, major: 195, minor: 0, fileMode: 438, uid: 0, gid: 44}\n",
        )
        .unwrap();
        let mut c = base_config();
        apply(&mut c, &edits, Target { idmap: None }).unwrap();
        assert_eq!(
            c["linux"]["devices"],
            json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 438, "uid": 0, "gid": 44}])
        );
        assert_eq!(c["linux"]["resources"]["devices"][1]["major"], 195, "given numbers are used as they are");
        assert_eq!(c["mounts"].as_array().unwrap().len(), 1, "no bind mount");
    }

    #[test]
    fn a_node_whose_host_path_is_missing_or_not_a_device_is_refused_at_apply() {
        for host in ["/nonexistent/nvidia9", "/etc/hostname"] {
            let edits = ContainerEdits {
                device_nodes: vec![DeviceNode {
                    path: "/dev/nvidia9".into(),
                    host_path: Some(host.into()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let e = apply(&mut base_config(), &edits, USERNS).unwrap_err();
            assert!(matches!(e, CdiError::HostNode { .. }), "{host}: {e}");
            assert!(e.to_string().contains(host), "{e}");
        }
    }

    #[test]
    fn a_group_outside_the_sandboxs_ids_is_refused() {
        let edits = ContainerEdits { additional_gids: vec![70_000], ..Default::default() };
        let e = apply(&mut base_config(), &edits, USERNS).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
    }

    fn refusal(edit: &str) -> String {
        let text = format!("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: '0'\n  containerEdits:\n{edit}");
        let e = catalog(&text).expect_err(edit);
        let msg = cove_types::error::chain(&e);
        assert!(msg.contains("nvidia.yaml") && msg.contains("device 0"), "names file and device: {msg}");
        msg
    }

    #[test]
    fn edits_that_would_break_isolation_are_refused_by_name() {
        let cases = [
            ("    mounts: [{hostPath: /, containerPath: /host}]\n", "'/' itself"),
            ("    mounts: [{hostPath: /var/lib/cove-data/sandboxes, containerPath: /x}]\n", "would expose"),
            ("    mounts: [{hostPath: /var/lib, containerPath: /x}]\n", "would expose"),
            ("    mounts: [{hostPath: /usr/lib, containerPath: /}]\n", "'/' itself"),
            ("    mounts: [{hostPath: /usr/lib, containerPath: /proc/driver}]\n", "would cover /proc"),
            ("    mounts: [{hostPath: /usr/lib, containerPath: /run/cove/x}]\n", "would cover /run/cove"),
            ("    mounts: [{hostPath: usr/lib, containerPath: /x}]\n", "not an absolute path"),
            ("    mounts: [{hostPath: /usr/../etc, containerPath: /x}]\n", "'..'"),
            ("    mounts: [{hostPath: /usr/lib, containerPath: /x, type: overlay}]\n", "only bind"),
            ("    hooks: [{hookName: createRuntime, path: nvidia-ctk}]\n", "hook path"),
            ("    hooks: [{hookName: onBoot, path: /bin/true}]\n", "hook name"),
            ("    deviceNodes: [{path: dev/nvidia0}]\n", "device node path"),
            ("    deviceNodes: [{path: /dev/nvidia0, permissions: rwx}]\n", "subset of rwm"),
            ("    deviceNodes: [{path: /dev/nvidia0, type: p}]\n", "only c, u and b"),
            ("    env: [NOVALUE]\n", "not K=V"),
            ("    netDevices: [{hostInterfaceName: eth1, name: eth1}]\n", "netDevices"),
        ];
        for (edit, want) in cases {
            let msg = refusal(edit);
            assert!(msg.contains(want), "{edit}: {msg}");
        }
    }

    #[test]
    fn an_edit_cove_does_not_know_is_refused_rather_than_skipped() {
        let text =
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: '0'\n  containerEdits:\n    sysctls: {a: b}\n";
        let msg = cove_types::error::chain(&catalog(text).unwrap_err());
        assert!(msg.contains("nvidia.yaml") && msg.contains("unknown field `sysctls`"), "{msg}");
    }

    #[test]
    fn a_spec_others_may_write_is_refused_because_its_hooks_run_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_spec(dir.path(), "nvidia.yaml", NVIDIA);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Catalog::load(&[dir.path().to_path_buf()], GPU_KIND, &[]).unwrap_err();
        assert!(matches!(e, CdiError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
    }

    #[test]
    fn bad_device_names_and_duplicates_are_refused() {
        assert!(refusal("    env: [A=1]\n- name: '0'\n  containerEdits: {}\n").contains("twice"));
        let text = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: ../x\n  containerEdits: {}\n";
        assert!(cove_types::error::chain(&catalog(text).unwrap_err()).contains("device names"));
    }
}
