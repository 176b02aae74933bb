//! The launcher: starts a sandbox's OCI bundle as `runc create` would, without a runc process.
//!
//! Contract:
//! - Input: the `config.json` value `oci::config` made (never another one), the sandbox's
//!   compiled seccomp program, and a runc state directory. [`supports`] says whether a config
//!   is inside what the launcher implements; anything else (privileged sandboxes, GPUs, hooks,
//!   device nodes, a unified-only cgroup host) stays with runc.
//! - Output: exactly runc's observable result: a process that is the init of new user (mapped
//!   as the config says), pid, mount, uts, ipc, network and cgroup namespaces, in the config's
//!   cgroups (v1 hierarchies, every one joined as runc does), with the config's mounts, masked
//!   and read-only paths, devices, capabilities, rlimits and seccomp filter, blocked before
//!   `execve` on `<root>/<id>/exec.fifo` until someone reads it; and a `state.json` with the
//!   fields runc writes that Cove reads (`runc::Runc::read_state`, kill, delete), so every later
//!   step (state, release, kill, delete, adoption after a restart) is the same for both.
//! - Why: a `runc create` costs two Go programs starting (runc, then `runc init`), a seccomp
//!   compilation and a cgroup manager: about 2/3 of the CPU of a sandbox create (see
//!   ARCHITECTURE.md, "Launch path"). Here the seccomp program is compiled once per profile and
//!   everything else is a few dozen system calls.
//! - How: the server prepares every string and number first; then it forks an intermediate
//!   child, which clones the container's init with the new namespaces and exits at once (the
//!   init is reparented to PID 1, as with runc, so sandboxes outlive the server). The parent
//!   writes the id maps, puts the init into its cgroups and sets its rlimits; the init then
//!   does its mounts and `pivot_root`, reports ready, loads seccomp, drops to its user and
//!   capabilities and waits on the fifo. Between fork and `execve` the children only make
//!   system calls on memory prepared before the fork (no allocation, no locks): the server is
//!   multi-threaded.
//! - Paths inside the rootfs are resolved with `openat2(RESOLVE_IN_ROOT)`: an image's symlink
//!   can never point a mount or a created file outside the sandbox's root.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::seccomp::Bpf;

/// A failed launch; `step` names what failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The config asks for something the launcher does not do (the caller uses runc).
    #[error("the launcher cannot start this config: {0}")]
    Unsupported(String),
    /// A host-side step (cgroups, id maps, state files, fork) failed.
    #[error("launch {id}: {step}")]
    Host {
        /// Container id.
        id: String,
        /// What was being done.
        step: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's init failed a step before `execve`.
    #[error("launch {id}: the container's init failed to {step}")]
    Init {
        /// Container id.
        id: String,
        /// The step, in words.
        step: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Why `config` cannot be launched here, or `Ok` when it can.
pub fn supports(config: &Value, host: &Host) -> Result<(), String> {
    if host.hierarchies.is_empty() {
        return Err("no cgroup v1 hierarchies on this host (the launcher does not drive cgroup v2)".into());
    }
    if config.get("hooks").is_some_and(|h| h.as_object().is_some_and(|o| !o.is_empty())) {
        return Err("hooks".into());
    }
    let linux = &config["linux"];
    if linux.get("devices").is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty())) {
        return Err("device nodes".into());
    }
    if linux.get("uidMappings").is_none() {
        return Err("no user namespace".into());
    }
    let ns: Vec<&str> =
        linux["namespaces"].as_array().into_iter().flatten().filter_map(|n| n["type"].as_str()).collect();
    for want in ["pid", "ipc", "uts", "mount", "network", "cgroup", "user"] {
        if !ns.contains(&want) {
            return Err(format!("no new {want} namespace"));
        }
    }
    if linux["namespaces"].as_array().into_iter().flatten().any(|n| n.get("path").is_some()) {
        return Err("a namespace to join".into());
    }
    if config["process"]["terminal"].as_bool() == Some(true) {
        return Err("a terminal".into());
    }
    if config["process"]["noNewPrivileges"].as_bool() == Some(true) {
        return Err("noNewPrivileges".into());
    }
    if !config["process"]["args"][0].as_str().is_some_and(|a| a.starts_with('/')) {
        return Err("a relative program path".into());
    }
    if config["root"]["readonly"].as_bool() == Some(true) {
        return Err("a read-only root".into());
    }
    let allowed_res = ["devices", "cpu", "memory", "pids"];
    if let Some(r) = linux["resources"].as_object()
        && let Some(k) = r.keys().find(|k| !allowed_res.contains(&k.as_str()))
    {
        return Err(format!("resource {k}"));
    }
    if linux["resources"]["devices"] != serde_json::json!([{"allow": false, "access": "rwm"}]) {
        return Err("device rules other than deny-all".into());
    }
    for m in config["mounts"].as_array().into_iter().flatten() {
        let ty = m["type"].as_str().unwrap_or("");
        if !["proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "bind"].contains(&ty) {
            return Err(format!("a {ty} mount"));
        }
        for o in m["options"].as_array().into_iter().flatten().filter_map(|o| o.as_str()) {
            if matches!(o, "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable") {
                return Err(format!("mount propagation {o}"));
            }
        }
    }
    if linux.get("rootfsPropagation").and_then(Value::as_str).is_some_and(|p| p != "private") {
        return Err("a rootfs propagation other than private".into());
    }
    Ok(())
}

/// A cgroup v1 hierarchy of the host.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Where the host mounts it (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Its directory name under `/sys/fs/cgroup` (`memory`, `cpu,cpuacct`, `systemd`).
    pub dir: String,
    /// The mount options naming it (`memory`, `cpu,cpuacct`, `none,name=systemd`).
    pub options: String,
    /// The key runc's `state.json` uses for each controller in it (`cpu`, `name=systemd`).
    pub keys: Vec<String>,
}

/// What the launcher learns of the host once.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// cgroup v1 hierarchies mounted under `/sys/fs/cgroup/`.
    pub hierarchies: Vec<Hierarchy>,
    /// Whether `/proc/kcore` exists (runc then links `/dev/core` to it).
    pub kcore: bool,
    /// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last: u32,
}

impl Host {
    /// Reads `/proc/self/mountinfo`.
    pub fn discover() -> Host {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        Host { hierarchies: hierarchies(&info), kcore: Path::new("/proc/kcore").exists(), cap_last }
    }
}

/// The cgroup v1 hierarchies of a mountinfo text.
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let (_source, super_opts) = (r.next(), r.next().unwrap_or(""));
        let Some(mount) = left.split_whitespace().nth(4) else { continue };
        let Some(dir) = mount.strip_prefix("/sys/fs/cgroup/") else { continue };
        if dir.contains('/') || out.iter().any(|h| h.dir == dir) {
            continue;
        }
        let known = [
            "cpu",
            "cpuacct",
            "cpuset",
            "memory",
            "devices",
            "freezer",
            "blkio",
            "pids",
            "net_cls",
            "net_prio",
            "perf_event",
            "hugetlb",
            "rdma",
            "misc",
        ];
        let mut names: Vec<String> = Vec::new();
        for o in super_opts.split(',') {
            if known.contains(&o) {
                names.push(o.to_string());
            } else if let Some(n) = o.strip_prefix("name=") {
                names.push(format!("name={n}"));
            }
        }
        if names.is_empty() {
            continue;
        }
        let options = if names.iter().all(|n| n.starts_with("name=")) {
            format!("none,{}", names.join(","))
        } else {
            names.join(",")
        };
        out.push(Hierarchy { mount: PathBuf::from(mount), dir: dir.to_string(), options, keys: names });
    }
    out
}

// --- What the children do, prepared before the fork -------------------------------------

/// One step of the init, reported by number when it fails.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Step {
    Sync = 1,
    SetIds,
    CgroupNs,
    Hostname,
    Propagation,
    BindRoot,
    OpenRoot,
    MakeTarget,
    OpenTarget,
    Mount,
    Remount,
    Device,
    Symlink,
    PivotRoot,
    ReadonlyPath,
    MaskPath,
    Setsid,
    Seccomp,
    Caps,
    Groups,
    Chdir,
    Exec,
    Clone,
    Fds,
    Keyring,
}

const STEPS: &[&str] = &[
    "",
    "wait for its parent",
    "become root of its user namespace",
    "make its namespaces",
    "set its hostname",
    "make its mounts private",
    "bind its root",
    "open its root",
    "create a mount point",
    "open a mount point",
    "mount",
    "remount",
    "bind a device node",
    "create a /dev link",
    "pivot_root",
    "make a path read-only",
    "mask a path",
    "start a session",
    "load its seccomp filter",
    "set its capabilities",
    "set its user and groups",
    "change to its working directory",
    "execve the agent",
    "clone with new namespaces",
    "arrange its file descriptors",
    "join a session keyring of its own",
];

/// A path inside the rootfs to create when missing: its parent (relative, `.` for the root)
/// and its last name.
#[derive(Debug)]
struct Create {
    parent: CString,
    name: CString,
    dir: bool,
}

#[derive(Debug)]
enum MountKind {
    /// A file system (`proc`, `tmpfs`, …): source, type, data.
    Fs { source: CString, fstype: CString, data: Option<CString> },
    /// A bind of a host path; `remount` flags are applied after (with the locked ones kept).
    Bind { source: CString, recursive: bool },
    /// `/sys/fs/cgroup` on cgroup v1: a tmpfs holding one cgroup mount per hierarchy.
    CgroupV1 { dirs: Vec<(CString, CString, CString)>, links: Vec<(CString, CString)> },
}

#[derive(Debug)]
struct MountPlan {
    /// Relative to the rootfs, no leading `/`.
    target: CString,
    /// Missing ancestors and the target itself, outermost first.
    create: Vec<Create>,
    kind: MountKind,
    flags: libc::c_ulong,
}

/// Everything the children need, as C strings and numbers.
#[derive(Debug)]
struct Plan {
    rootfs: CString,
    hostname: CString,
    mounts: Vec<MountPlan>,
    devices: Vec<(CString, Create)>,
    dev_links: Vec<(CString, CString)>,
    readonly: Vec<CString>,
    masked: Vec<CString>,
    dev_null: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    bounding: u64,
    caps: u64,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, String> {
    CString::new(s.as_ref()).map_err(|_| "a string with a NUL byte".to_string())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// Mount flags and data of OCI mount options, as runc maps them.
fn mount_options(options: &[String]) -> Result<(libc::c_ulong, bool, Vec<String>), String> {
    let (mut flags, mut recursive, mut data) = (0, false, Vec::new());
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "bind" => {}
            "rbind" => recursive = true,
            "private" | "rprivate" => {}
            "suid" | "dev" | "exec" | "async" | "atime" | "diratime" | "norelatime" | "nostrictatime" => {
                return Err(format!("mount option {o}"));
            }
            other => data.push(other.to_string()),
        }
    }
    Ok((flags, recursive, data))
}

/// The paths to create for `target` (relative): every ancestor as a directory, the target as
/// a directory or (`file`) a file.
fn creates(target: &str, file: bool) -> Result<Vec<Create>, String> {
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(format!("mount destination /{target} has . or .."));
    }
    let mut out = Vec::new();
    for i in 0..parts.len() {
        let parent = if i == 0 { ".".to_string() } else { parts[..i].join("/") };
        out.push(Create { parent: cstr(parent)?, name: cstr(parts[i])?, dir: !(file && i == parts.len() - 1) });
    }
    Ok(out)
}

/// `rel` (inside `root`) with every symlink resolved as if `root` were `/`: absolute links
/// restart at the root, `..` stops there, missing components stay as written. What runc's
/// `securejoin` does, so that a mount target an image links to a path it lacks (a dangling
/// `/etc/resolv.conf` link) is created where the link leads, inside the root. The result has
/// no `.`, `..` or empty components; the init resolves it again with `RESOLVE_IN_ROOT`.
fn resolve_in_root(root: &Path, rel: &str) -> String {
    let mut done: Vec<String> = Vec::new();
    let mut todo: std::collections::VecDeque<String> =
        rel.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(done.join("/")).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => {
                links += 1;
                let Ok(to) = std::fs::read_link(&candidate) else {
                    done.push(c);
                    continue;
                };
                let to = to.to_string_lossy().into_owned();
                if to.starts_with('/') {
                    done.clear();
                }
                for (i, part) in to.split('/').filter(|p| !p.is_empty()).enumerate() {
                    todo.insert(i, part.to_string());
                }
            }
            _ => done.push(c),
        }
    }
    done.join("/")
}

fn cap_bits(names: &[String]) -> Result<u64, String> {
    let mut bits = 0u64;
    for n in names {
        let i = crate::oci::ALL_CAPS.iter().position(|c| c == n).ok_or_else(|| format!("capability {n}"))?;
        bits |= 1 << i;
    }
    Ok(bits)
}

fn plan(config: &Value, host: &Host) -> Result<Plan, String> {
    let rootfs = config["root"]["path"].as_str().ok_or("no root.path")?;
    let process = &config["process"];
    let caps = &process["capabilities"];
    if !strings(&caps["ambient"]).is_empty() || !strings(&caps["inheritable"]).is_empty() {
        return Err("ambient or inheritable capabilities".into());
    }
    let (effective, permitted) = (strings(&caps["effective"]), strings(&caps["permitted"]));
    if effective != permitted {
        return Err("effective capabilities other than the permitted ones".into());
    }
    let mut mounts = Vec::new();
    for m in config["mounts"].as_array().into_iter().flatten() {
        let dest = m["destination"].as_str().ok_or("a mount without destination")?;
        if dest.split('/').any(|c| c == "..") {
            return Err(format!("mount destination {dest} has .."));
        }
        let resolved = resolve_in_root(Path::new(rootfs), dest);
        let rel = resolved.as_str();
        let ty = m["type"].as_str().unwrap_or("");
        let source = m["source"].as_str().unwrap_or(ty);
        let (flags, recursive, data) = mount_options(&strings(&m["options"]))?;
        let plan = match ty {
            "bind" => {
                let file = !Path::new(source).is_dir();
                MountPlan {
                    target: cstr(rel)?,
                    create: creates(rel, file)?,
                    kind: MountKind::Bind { source: cstr(source)?, recursive },
                    flags,
                }
            }
            "cgroup" => {
                let mut dirs = Vec::new();
                let mut links = Vec::new();
                for h in &host.hierarchies {
                    // runc names a named hierarchy's source after it (`systemd`), the others `cgroup`.
                    let source = h.keys.iter().find_map(|k| k.strip_prefix("name=")).unwrap_or("cgroup");
                    dirs.push((cstr(&h.dir)?, cstr(&h.options)?, cstr(source)?));
                    if h.dir.contains(',') {
                        for part in h.dir.split(',') {
                            links.push((cstr(&h.dir)?, cstr(part)?));
                        }
                    }
                }
                MountPlan {
                    target: cstr(rel)?,
                    create: creates(rel, false)?,
                    kind: MountKind::CgroupV1 { dirs, links },
                    flags,
                }
            }
            _ => MountPlan {
                target: cstr(rel)?,
                create: creates(rel, false)?,
                kind: MountKind::Fs {
                    source: cstr(source)?,
                    fstype: cstr(ty)?,
                    data: if data.is_empty() { None } else { Some(cstr(data.join(","))?) },
                },
                flags,
            },
        };
        mounts.push(plan);
    }
    let mut devices = Vec::new();
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        devices.push((cstr(format!("/dev/{d}"))?, Create { parent: cstr("dev")?, name: cstr(d)?, dir: false }));
    }
    let mut dev_links = vec![
        (cstr("/proc/self/fd")?, cstr("fd")?),
        (cstr("/proc/self/fd/0")?, cstr("stdin")?),
        (cstr("/proc/self/fd/1")?, cstr("stdout")?),
        (cstr("/proc/self/fd/2")?, cstr("stderr")?),
        (cstr("pts/ptmx")?, cstr("ptmx")?),
    ];
    if host.kcore {
        dev_links.push((cstr("/proc/kcore")?, cstr("core")?));
    }
    let linux = &config["linux"];
    let user = &process["user"];
    let groups = user["additionalGids"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok()).ok_or("a bad additional gid"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        rootfs: cstr(rootfs)?,
        hostname: cstr(config["hostname"].as_str().unwrap_or(""))?,
        mounts,
        devices,
        dev_links,
        readonly: strings(&linux["readonlyPaths"]).iter().map(cstr).collect::<Result<_, _>>()?,
        masked: strings(&linux["maskedPaths"]).iter().map(cstr).collect::<Result<_, _>>()?,
        dev_null: cstr("/dev/null")?,
        uid: user["uid"].as_u64().and_then(|u| u32::try_from(u).ok()).ok_or("no process.user.uid")?,
        gid: user["gid"].as_u64().and_then(|u| u32::try_from(u).ok()).ok_or("no process.user.gid")?,
        groups,
        bounding: cap_bits(&strings(&caps["bounding"]))?,
        caps: cap_bits(&effective)?,
        cwd: cstr(process["cwd"].as_str().unwrap_or("/"))?,
        argv: strings(&process["args"]).iter().map(cstr).collect::<Result<_, _>>()?,
        envp: strings(&process["env"]).iter().map(cstr).collect::<Result<_, _>>()?,
    })
}

// --- The children --------------------------------------------------------------------

/// `/proc/self/fd/<fd>` in a stack buffer (no allocation between fork and exec).
struct FdPath([u8; 40]);

impl FdPath {
    fn new(fd: RawFd) -> FdPath {
        let mut b = [0u8; 40];
        let prefix = b"/proc/self/fd/";
        b[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let (mut n, mut len) = (fd.max(0) as u32, 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            b[prefix.len() + i] = digits[len - 1 - i];
        }
        FdPath(b)
    }

    fn ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Reports `step` and the current errno to the parent and exits.
fn die(report: RawFd, step: Step) -> ! {
    let e = errno();
    let mut msg = [0u8; 6];
    msg[0] = b'E';
    msg[1] = step as u8;
    msg[2..].copy_from_slice(&e.to_le_bytes());
    // SAFETY: writes 6 bytes of a live stack buffer; _exit never returns and runs no
    // destructors or atexit handlers of the forked copy of the server.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}

fn check(r: libc::c_long, report: RawFd, step: Step) -> libc::c_long {
    if r < 0 {
        die(report, step)
    }
    r
}

/// `openat2` with `RESOLVE_IN_ROOT`: `path` is resolved as if `root` were `/`.
fn open_in_root(root: RawFd, path: &CStr, flags: i32, mode: u32) -> RawFd {
    // SAFETY: open_how is plain old data (three u64 fields); zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` lives across the call, whose size is passed.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        ) as RawFd
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this child opened; no Rust object owns it.
    unsafe { libc::close(fd) };
}

/// Creates what is missing of a mount target (ancestors as directories), inside the root.
fn make_target(root: RawFd, target: &CStr, create: &[Create], report: RawFd) {
    for c in create {
        if c.dir {
            let parent = open_in_root(root, &c.parent, libc::O_PATH | libc::O_DIRECTORY, 0);
            if parent < 0 {
                die(report, Step::MakeTarget);
            }
            // SAFETY: `name` is NUL-terminated; `parent` is an open directory descriptor.
            let r = unsafe { libc::mkdirat(parent, c.name.as_ptr(), 0o755) };
            if r < 0 && errno() != libc::EEXIST {
                die(report, Step::MakeTarget);
            }
            close(parent);
        } else {
            // Not O_WRONLY: an image's fifo there must not block the init; O_CREAT follows a
            // symlink, but resolved inside the root.
            let fd =
                open_in_root(root, target, libc::O_RDONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY, 0o644);
            if fd < 0 {
                die(report, Step::MakeTarget);
            }
            close(fd);
        }
    }
}

/// Opens a mount target inside the root (`O_PATH`), creating it when missing.
fn target_fd(root: RawFd, target: &CStr, create: &[Create], report: RawFd) -> RawFd {
    let fd = open_in_root(root, target, libc::O_PATH, 0);
    if fd >= 0 {
        return fd;
    }
    if errno() != libc::ENOENT {
        die(report, Step::OpenTarget);
    }
    make_target(root, target, create, report);
    let fd = open_in_root(root, target, libc::O_PATH, 0);
    if fd < 0 {
        die(report, Step::OpenTarget);
    }
    fd
}

/// The per-mount flags a bind remount must keep (a user namespace may not clear those the
/// source was mounted with).
fn locked_flags(fd: RawFd) -> libc::c_ulong {
    // SAFETY: statvfs is plain old data; fstatvfs fills it or fails.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out pointer.
    if unsafe { libc::fstatvfs(fd, &mut st) } < 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms;
        }
    }
    out |= if f & libc::ST_NOATIME != 0 {
        libc::MS_NOATIME
    } else if f & libc::ST_RELATIME != 0 {
        libc::MS_RELATIME
    } else {
        libc::MS_STRICTATIME
    };
    out
}

fn mount(
    source: *const libc::c_char,
    target: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> i32 {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    unsafe { libc::mount(source, target, fstype, flags, data.cast()) }
}

const ATIME: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

fn do_mount(root: RawFd, m: &MountPlan, report: RawFd) {
    let null = std::ptr::null();
    let fd = target_fd(root, &m.target, &m.create, report);
    let path = FdPath::new(fd);
    match &m.kind {
        MountKind::Fs { source, fstype, data } => {
            let data = data.as_ref().map_or(null, |d| d.as_ptr());
            if mount(source.as_ptr(), path.ptr(), fstype.as_ptr(), m.flags, data) < 0 {
                die(report, Step::Mount);
            }
        }
        MountKind::Bind { source, recursive } => {
            let rec = if *recursive { libc::MS_REC } else { 0 };
            if mount(source.as_ptr(), path.ptr(), null, libc::MS_BIND | rec, null) < 0 {
                die(report, Step::Mount);
            }
            if m.flags != 0 {
                // The descriptor above is the covered directory: reopen to reach the bind.
                let new = open_in_root(root, &m.target, libc::O_PATH, 0);
                if new < 0 {
                    die(report, Step::Remount);
                }
                let mut flags = m.flags | locked_flags(new);
                if m.flags & ATIME != 0 {
                    flags = (flags & !ATIME) | (m.flags & ATIME);
                }
                let p = FdPath::new(new);
                if mount(null, p.ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | flags, null) < 0 {
                    die(report, Step::Remount);
                }
                close(new);
            }
        }
        MountKind::CgroupV1 { dirs, links } => {
            let tmpfs = c"tmpfs";
            let flags = m.flags & !libc::MS_RDONLY & !libc::MS_RELATIME;
            if mount(tmpfs.as_ptr(), path.ptr(), tmpfs.as_ptr(), flags, c"mode=755".as_ptr()) < 0 {
                die(report, Step::Mount);
            }
            let cg = open_in_root(root, &m.target, libc::O_PATH | libc::O_DIRECTORY, 0);
            if cg < 0 {
                die(report, Step::OpenTarget);
            }
            for (dir, options, source) in dirs {
                // SAFETY: `dir` is NUL-terminated; `cg` is the fresh tmpfs.
                if unsafe { libc::mkdirat(cg, dir.as_ptr(), 0o755) } < 0 {
                    die(report, Step::MakeTarget);
                }
                // SAFETY: as above; O_NOFOLLOW on a directory just made on our own tmpfs.
                let sub = unsafe {
                    libc::openat(
                        cg,
                        dir.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if sub < 0 {
                    die(report, Step::OpenTarget);
                }
                let p = FdPath::new(sub);
                if mount(source.as_ptr(), p.ptr(), c"cgroup".as_ptr(), m.flags, options.as_ptr()) < 0 {
                    die(report, Step::Mount);
                }
                close(sub);
            }
            for (to, name) in links {
                // SAFETY: both strings are NUL-terminated; `cg` is an open directory.
                if unsafe { libc::symlinkat(to.as_ptr(), cg, name.as_ptr()) } < 0 && errno() != libc::EEXIST {
                    die(report, Step::Symlink);
                }
            }
            if m.flags & libc::MS_RDONLY != 0 {
                let p = FdPath::new(cg);
                if mount(null, p.ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | m.flags, null) < 0 {
                    die(report, Step::Remount);
                }
            }
            close(cg);
        }
    }
    close(fd);
}

/// keyctl(2) operations and the permissions runc sets on a container's session keyring
/// (possessor and user: all; group and others: none).
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_SETPERM: libc::c_long = 5;
const KEYRING_PERM: libc::c_ulong = 0x3f3f_0000;

/// Descriptors the init keeps, at fixed numbers once arranged.
const SYNC_FD: RawFd = 3;
const REPORT_FD: RawFd = 4;
const FIFO_FD: RawFd = 5;

/// Raw system call returning a c_long; fails as -1 with errno.
macro_rules! sys {
    ($($arg:expr),+ $(,)?) => {
        // SAFETY: a raw system call whose pointer arguments (if any) are live, NUL-terminated
        // strings or buffers prepared before the fork.
        unsafe { libc::syscall($($arg),+) }
    };
}

/// What the init (and the intermediate child on its behalf) runs with, prepared before the fork.
struct InitArgs<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    seccomp: Option<&'a Bpf>,
    cap_last: u32,
}

/// The container's init, from the clone to `execve`.
fn init(a: &InitArgs<'_>) -> ! {
    let InitArgs { plan, argv, envp, seccomp, cap_last } = *a;
    let report = REPORT_FD;
    let null = std::ptr::null::<libc::c_char>();
    // Until `execve` this process holds a copy of the server's memory: nobody may read it
    // (`execve` of the agent makes it dumpable again, as with runc).
    check(sys!(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 0, 0, 0, 0), report, Step::Sync);
    // Default signal dispositions and an empty mask (the server ignores SIGPIPE, and its
    // threads' masks are its own).
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition to the default; errors (reserved signals) ignored.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty set, then set as the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    // Wait until the parent has written the id maps and joined us to the cgroups.
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a stack buffer.
    if unsafe { libc::read(SYNC_FD, b.as_mut_ptr().cast(), 1) } != 1 {
        die(report, Step::Sync);
    }
    close(SYNC_FD);
    check(sys!(libc::SYS_setresgid, 0, 0, 0), report, Step::SetIds);
    check(sys!(libc::SYS_setresuid, 0, 0, 0), report, Step::SetIds);
    check(sys!(libc::SYS_setgroups, 0, null), report, Step::SetIds);
    // A session keyring of its own, as runc gives each container (else the server's would be
    // inherited), usable by the sandbox's root only; kernels without keyrings are fine.
    let ring = sys!(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, null);
    if ring < 0 && errno() != libc::ENOSYS {
        die(report, Step::Keyring);
    }
    if ring >= 0 {
        check(sys!(libc::SYS_keyctl, KEYCTL_SETPERM, ring, KEYRING_PERM), report, Step::Keyring);
    }
    // The other namespaces are made now, by the sandbox's root (as runc's nsexec does): what
    // they create at birth (the mqueue file system's root) belongs to it, not to the host's
    // root; the cgroup one only now that the parent has put us in our cgroups.
    let ns = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP;
    // SAFETY: unshare with namespace flags only, in a single-threaded process.
    if unsafe { libc::unshare(ns) } < 0 {
        die(report, Step::CgroupNs);
    }
    let host = plan.hostname.as_bytes();
    // SAFETY: the hostname bytes and their length.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } < 0 {
        die(report, Step::Hostname);
    }
    if mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null) < 0 {
        die(report, Step::Propagation);
    }
    if mount(plan.rootfs.as_ptr(), plan.rootfs.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null) < 0 {
        die(report, Step::BindRoot);
    }
    // SAFETY: opening the bound root by its NUL-terminated path.
    let root = unsafe { libc::open(plan.rootfs.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if root < 0 {
        die(report, Step::OpenRoot);
    }
    for m in &plan.mounts {
        do_mount(root, m, report);
    }
    for (source, c) in &plan.devices {
        let mut target = [0u8; 32];
        let name = c.name.as_bytes();
        target[..4].copy_from_slice(b"dev/");
        target[4..4 + name.len()].copy_from_slice(name);
        // SAFETY: "dev/<name>" NUL-terminated in a zeroed buffer (names are short and fixed).
        let target = unsafe { CStr::from_ptr(target.as_ptr().cast()) };
        let fd = open_in_root(root, target, libc::O_RDONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY, 0o666);
        if fd < 0 {
            die(report, Step::Device);
        }
        close(fd);
        let fd = open_in_root(root, target, libc::O_PATH, 0);
        if fd < 0 {
            die(report, Step::Device);
        }
        let p = FdPath::new(fd);
        if mount(source.as_ptr(), p.ptr(), null, libc::MS_BIND, null) < 0 {
            die(report, Step::Device);
        }
        close(fd);
    }
    let dev = open_in_root(root, c"dev", libc::O_PATH | libc::O_DIRECTORY, 0);
    if dev < 0 {
        die(report, Step::Symlink);
    }
    for (to, name) in &plan.dev_links {
        // SAFETY: NUL-terminated strings; `dev` is the sandbox's own /dev tmpfs.
        if unsafe { libc::symlinkat(to.as_ptr(), dev, name.as_ptr()) } < 0 && errno() != libc::EEXIST {
            die(report, Step::Symlink);
        }
    }
    close(dev);
    // pivot_root(".", "."), then the old root (now under the new one) goes.
    // SAFETY: opening "/" of this mount namespace.
    let old = unsafe { libc::open(c"/".as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: fchdir to descriptors this child holds.
    if old < 0 || unsafe { libc::fchdir(root) } < 0 {
        die(report, Step::PivotRoot);
    }
    check(sys!(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()), report, Step::PivotRoot);
    // SAFETY: as above.
    if unsafe { libc::fchdir(old) } < 0 {
        die(report, Step::PivotRoot);
    }
    if mount(null, c".".as_ptr(), null, libc::MS_SLAVE | libc::MS_REC, null) < 0 {
        die(report, Step::PivotRoot);
    }
    // SAFETY: detaching the old root by a NUL-terminated path.
    if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } < 0 || unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
        die(report, Step::PivotRoot);
    }
    close(old);
    close(root);
    for p in &plan.readonly {
        if mount(p.as_ptr(), p.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null) < 0 {
            if errno() == libc::ENOENT {
                continue;
            }
            die(report, Step::ReadonlyPath);
        }
        // SAFETY: O_PATH open of an absolute path in the sandbox's own /proc.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        let locked = if fd >= 0 { locked_flags(fd) } else { 0 };
        if fd >= 0 {
            close(fd);
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | locked;
        if mount(null, p.as_ptr(), null, flags, null) < 0 {
            die(report, Step::ReadonlyPath);
        }
    }
    for p in &plan.masked {
        if mount(plan.dev_null.as_ptr(), p.as_ptr(), null, libc::MS_BIND, null) < 0 {
            match errno() {
                libc::ENOENT => continue,
                libc::ENOTDIR => {
                    let tmpfs = c"tmpfs";
                    if mount(tmpfs.as_ptr(), p.as_ptr(), tmpfs.as_ptr(), libc::MS_RDONLY, null) < 0 {
                        die(report, Step::MaskPath);
                    }
                }
                _ => die(report, Step::MaskPath),
            }
        }
    }
    check(sys!(libc::SYS_setsid), report, Step::Setsid);
    finalize(plan, seccomp, cap_last, report);
    // The agent waits on the exec fifo (descriptor FIFO_FD, named by COVE_EXEC_FIFO) where
    // runc's init would wait before `execve`: a prepared sandbox then holds a small static
    // program's memory, not a copy of the server's. The report pipe closes at `execve`: that
    // end of file is the parent's "ready".
    // SAFETY: argv and envp are null-terminated arrays of pointers to live C strings.
    unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
    die(report, Step::Exec)
}

/// Seccomp, the bounding set, user and groups, capabilities and the working directory: the
/// last steps before `execve`, for the init and for [`exec`].
fn finalize(plan: &Plan, seccomp: Option<&Bpf>, cap_last: u32, report: RawFd) {
    // Without no_new_privs seccomp needs CAP_SYS_ADMIN: loaded before the capabilities drop,
    // as runc does; the profile allows what follows.
    if let Some(bpf) = seccomp
        && crate::seccomp::load(bpf).is_err()
    {
        die(report, Step::Seccomp);
    }
    for cap in 0..=cap_last {
        if cap < 64 && plan.bounding & (1 << cap) == 0 {
            check(sys!(libc::SYS_prctl, libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0), report, Step::Caps);
        }
    }
    // SAFETY: chdir to a NUL-terminated path; a failure is retried as the user below.
    let early_cwd = unsafe { libc::chdir(plan.cwd.as_ptr()) } == 0;
    check(sys!(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), report, Step::Caps);
    check(sys!(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()), report, Step::Groups);
    check(sys!(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid), report, Step::Groups);
    check(sys!(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid), report, Step::Groups);
    check(sys!(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 0, 0, 0, 0), report, Step::Caps);
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = CapHeader { version: 0x2008_0522, pid: 0 };
    let lo = (plan.caps & 0xffff_ffff) as u32;
    let hi = (plan.caps >> 32) as u32;
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: 0 },
        CapData { effective: hi, permitted: hi, inheritable: 0 },
    ];
    check(sys!(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()), report, Step::Caps);
    check(sys!(libc::SYS_prctl, libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), report, Step::Caps);
    // SAFETY: as above.
    if !early_cwd && unsafe { libc::chdir(plan.cwd.as_ptr()) } < 0 {
        die(report, Step::Chdir);
    }
}

// --- The parent ------------------------------------------------------------------------

/// Device rules runc 1.1 adds after the config's deny-all (`specconv.AllowedDevices`).
const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:8 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:5 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
];

/// How long the init may take from the clone to ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn host_err(id: &str, step: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let (id, step) = (id.to_string(), step.into());
    move |source| LaunchError::Host { id, step, source }
}

/// Makes the container's cgroup in every hierarchy with the config's limits; returns runc's
/// `cgroup_paths` (controller → directory).
fn make_cgroups(id: &str, config: &Value, host: &Host) -> Result<(), LaunchError> {
    let linux = &config["linux"];
    let rel = cgroups_rel(config)?;
    let r = &linux["resources"];
    let write = |dir: &Path, file: &str, value: &str| -> Result<(), LaunchError> {
        std::fs::write(dir.join(file), value)
            .map_err(host_err(id, format!("write {value} to {}", dir.join(file).display())))
    };
    for h in &host.hierarchies {
        let dir = h.mount.join(rel);
        if h.keys.iter().any(|k| k == "cpuset") {
            // A new cpuset cgroup starts empty; each level gets its parent's cpus and mems.
            let mut cur = h.mount.clone();
            for part in Path::new(rel).components() {
                let next = cur.join(part);
                match std::fs::create_dir(&next) {
                    Ok(()) => {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let v = std::fs::read_to_string(cur.join(f)).map_err(host_err(id, format!("read {f}")))?;
                            write(&next, f, v.trim())?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(host_err(id, format!("create cgroup {}", next.display()))(e)),
                }
                cur = next;
            }
        } else {
            std::fs::create_dir_all(&dir).map_err(host_err(id, format!("create cgroup {}", dir.display())))?;
        }
        for k in &h.keys {
            match k.as_str() {
                "memory" => {
                    if let Some(limit) = r["memory"]["limit"].as_u64() {
                        write(&dir, "memory.limit_in_bytes", &limit.to_string())?;
                    }
                    if let Some(swap) = r["memory"]["swap"].as_u64()
                        && dir.join("memory.memsw.limit_in_bytes").exists()
                    {
                        write(&dir, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    }
                }
                "cpu" => {
                    if let Some(p) = r["cpu"]["period"].as_u64() {
                        write(&dir, "cpu.cfs_period_us", &p.to_string())?;
                    }
                    if let Some(q) = r["cpu"]["quota"].as_i64() {
                        write(&dir, "cpu.cfs_quota_us", &q.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(p) = r["pids"]["limit"].as_i64() {
                        write(&dir, "pids.max", &if p > 0 { p.to_string() } else { "max".into() })?;
                    }
                }
                "devices" => {
                    write(&dir, "devices.deny", "a")?;
                    for rule in DEFAULT_DEVICE_RULES {
                        write(&dir, "devices.allow", rule)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `linux.cgroupsPath` without its leading `/`, checked.
fn cgroups_rel(config: &Value) -> Result<&str, LaunchError> {
    let rel = config["linux"]["cgroupsPath"].as_str().unwrap_or("").trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|p| p.is_empty() || p == ".." || p == ".") {
        return Err(LaunchError::Unsupported(format!("cgroupsPath {rel:?}")));
    }
    Ok(rel)
}

/// runc's `cgroup_paths`: controller (or `name=…`) → the container's directory in its hierarchy.
fn cgroup_paths(config: &Value, host: &Host) -> Result<Vec<(String, PathBuf)>, LaunchError> {
    let rel = cgroups_rel(config)?;
    Ok(host.hierarchies.iter().flat_map(|h| h.keys.iter().map(move |k| (k.clone(), h.mount.join(rel)))).collect())
}

/// Writes `state.json` (atomically) with the fields of runc's that Cove reads. Written first
/// with pid 0 (before the cgroups exist: a crash then leaves a stopped container whose delete
/// removes them), again once the init exists, before it does anything.
fn write_state(dir: &Path, id: &str, pid: i32, start: u64, cgroups: &[(String, PathBuf)]) -> std::io::Result<()> {
    let paths: serde_json::Map<String, Value> =
        cgroups.iter().map(|(k, p)| (k.clone(), Value::String(p.display().to_string()))).collect();
    let state = serde_json::json!({
        "id": id,
        "init_process_pid": pid,
        "init_process_start": start,
        "cgroup_paths": paths,
        "launcher": "cove",
    });
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, state.to_string())?;
    std::fs::rename(&tmp, dir.join("state.json"))
}

/// Best effort: a launch being undone (its init killed, or never made).
fn remove_cgroups(paths: &[(String, PathBuf)]) {
    for (_, p) in paths {
        let _ = crate::runc::remove_cgroup(p);
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which are then owned here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just returned by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads exactly `buf.len()` bytes, or fewer at end of file, waiting at most `timeout`.
fn read_timeout(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the container's init"));
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one pollfd on the stack.
        let Some(ready) = interrupted_is_none(unsafe { libc::poll(&mut pfd, 1, ms) } as isize)? else { continue };
        if ready == 0 {
            continue;
        }
        // SAFETY: reads into the unfilled tail of `buf`.
        let read = unsafe { libc::read(fd.as_raw_fd(), buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        let Some(n) = interrupted_is_none(read)? else { continue };
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// A system call's result: `Ok(Some(n))`, `Ok(None)` when interrupted (to retry), or the error.
fn interrupted_is_none(r: isize) -> std::io::Result<Option<usize>> {
    if r >= 0 {
        return Ok(Some(r as usize));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::Interrupted { Ok(None) } else { Err(e) }
}

/// The start time runc records (`runc::proc_state_and_start`).
fn start_time(pid: i32) -> std::io::Result<u64> {
    crate::runc::proc_state_and_start(pid as u32)
        .map(|(_, start)| start)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no readable /proc/{pid}/stat")))
}

/// Creates the container `id` from `config` (see the module's contract) with its state in
/// `<state_root>/<id>/`; returns the init's host pid. The init waits on `exec.fifo` there.
/// Blocking: call from a blocking thread.
pub fn create(
    state_root: &Path,
    id: &str,
    config: &Value,
    host: &Host,
    seccomp: Option<&Bpf>,
    console: &Path,
) -> Result<i32, LaunchError> {
    supports(config, host).map_err(LaunchError::Unsupported)?;
    if config["linux"].get("seccomp").is_some() != seccomp.is_some() {
        return Err(LaunchError::Unsupported("a seccomp object without its compiled program".into()));
    }
    let plan = plan(config, host).map_err(LaunchError::Unsupported)?;
    let map = |key: &str| -> Result<String, LaunchError> {
        let mut text = String::new();
        for m in config["linux"][key].as_array().into_iter().flatten() {
            let (c, h, s) = (m["containerID"].as_u64(), m["hostID"].as_u64(), m["size"].as_u64());
            let (Some(c), Some(h), Some(s)) = (c, h, s) else {
                return Err(LaunchError::Unsupported(format!("a malformed {key} entry")));
            };
            text.push_str(&format!("{c} {h} {s}\n"));
        }
        Ok(text)
    };
    let (uid_map, gid_map) = (map("uidMappings")?, map("gidMappings")?);
    let nofile = config["process"]["rlimits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["type"].as_str(), r["soft"].as_u64(), r["hard"].as_u64()))
        .collect::<Vec<_>>();
    if nofile.iter().any(|(t, _, _)| *t != Some("RLIMIT_NOFILE")) {
        return Err(LaunchError::Unsupported("rlimits other than RLIMIT_NOFILE".into()));
    }
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut plan = plan;
    plan.envp.push(c"COVE_EXEC_FIFO=5".to_owned());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());

    let dir = state_root.join(id);
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .map_err(host_err(id, format!("create the state directory {}", dir.display())))?;
    let cgroups = cgroup_paths(config, host)?;
    let t_cgroups = std::time::Instant::now();
    let made = write_state(&dir, id, 0, 0, &cgroups)
        .map_err(host_err(id, "write state.json"))
        .and_then(|()| make_cgroups(id, config, host));
    if let Err(e) = made {
        remove_cgroups(&cgroups);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    tracing::debug!(container = id, cgroups_ms = t_cgroups.elapsed().as_secs_f64() * 1e3, "launch cgroups made");
    let cleanup = |pid: Option<i32>| {
        if let Some(pid) = pid {
            // SAFETY: signalling the init we cloned (not reaped by anyone yet, or exited).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        remove_cgroups(&cgroups);
        let _ = std::fs::remove_dir_all(&dir);
    };
    match spawn(id, &dir, &plan, &argv, &envp, seccomp, host, console, &uid_map, &gid_map, &nofile, &cgroups) {
        Ok(pid) => Ok(pid),
        Err((pid, e)) => {
            cleanup(pid);
            Err(e)
        }
    }
}

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

type Spawned = Result<i32, (Option<i32>, LaunchError)>;

#[allow(clippy::too_many_arguments)]
fn spawn(
    id: &str,
    dir: &Path,
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    seccomp: Option<&Bpf>,
    host: &Host,
    console: &Path,
    uid_map: &str,
    gid_map: &str,
    nofile: &[(Option<&str>, Option<u64>, Option<u64>)],
    cgroups: &[(String, PathBuf)],
) -> Spawned {
    let early = |step: &str| {
        let step = step.to_string();
        let id = id.to_string();
        move |source| (None, LaunchError::Host { id, step, source })
    };
    let fifo = dir.join("exec.fifo");
    let fifo_c = CString::new(fifo.as_os_str().as_bytes()).map_err(|e| early("name the exec fifo")(e.into()))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o622) } < 0 {
        return Err(early("create the exec fifo")(std::io::Error::last_os_error()));
    }
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(early("chmod the exec fifo"))?;
    let fifo_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&fifo)
        .map_err(early("open the exec fifo"))?;
    let console_fd =
        std::fs::OpenOptions::new().create(true).append(true).open(console).map_err(early("open the console log"))?;
    let null_fd =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(early("open /dev/null"))?;
    let (sync_rd, sync_wr) = pipe().map_err(early("make a pipe"))?;
    let (report_rd, report_wr) = pipe().map_err(early("make a pipe"))?;
    let (pid_rd, pid_wr) = pipe().map_err(early("make a pipe"))?;
    // The pid namespace at the clone (the init must be its first process); the others once
    // the init is the sandbox's root (`init`).
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
    let cap_last = host.cap_last;
    let fds = [
        sync_rd.as_raw_fd(),
        report_wr.as_raw_fd(),
        fifo_fd.as_raw_fd(),
        console_fd.as_raw_fd(),
        null_fd.as_raw_fd(),
        pid_wr.as_raw_fd(),
    ];

    let t_fork = std::time::Instant::now();
    // SAFETY: fork of a multi-threaded process: the child only makes system calls on memory
    // prepared above (descriptors, `plan`, `argv`, `envp`, the seccomp program) and ends in
    // `_exit` or `execve`.
    let p1 = unsafe { libc::fork() };
    if p1 < 0 {
        return Err(early("fork")(std::io::Error::last_os_error()));
    }
    if p1 == 0 {
        intermediate(fds, flags, &InitArgs { plan, argv, envp, seccomp, cap_last });
    }
    drop((sync_rd, report_wr, pid_wr, fifo_fd, console_fd, null_fd));
    let mut buf = [0u8; 4];
    let got = read_timeout(&pid_rd, &mut buf, READY_TIMEOUT);
    let mut status = 0;
    // SAFETY: reaping the intermediate child forked above.
    unsafe { libc::waitpid(p1, &mut status, 0) };
    let fork_ms = t_fork.elapsed().as_secs_f64() * 1e3;
    let pid = match got {
        Ok(4) => i32::from_le_bytes(buf),
        Ok(_) => return Err((None, init_error(id, &report_rd))),
        Err(e) => return Err(early("read the init's pid")(e)),
    };
    let fail = |step: &str| {
        let (step, id) = (step.to_string(), id.to_string());
        move |source| (Some(pid), LaunchError::Host { id, step, source })
    };
    let start = start_time(pid).map_err(fail("read the init's start time"))?;
    write_state(dir, id, pid, start, cgroups).map_err(fail("write state.json"))?;
    std::fs::write(format!("/proc/{pid}/uid_map"), uid_map).map_err(fail("write uid_map"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid_map).map_err(fail("write gid_map"))?;
    for (_, soft, hard) in nofile {
        let lim = libc::rlimit64 { rlim_cur: soft.unwrap_or(0), rlim_max: hard.unwrap_or(0) };
        // SAFETY: setting a limit of the init from a valid struct.
        if unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) } < 0 {
            return Err(fail("set RLIMIT_NOFILE")(std::io::Error::last_os_error()));
        }
    }
    let mut joined: Vec<&PathBuf> = Vec::new();
    for (_, p) in cgroups {
        if !joined.contains(&p) {
            std::fs::write(p.join("cgroup.procs"), pid.to_string()).map_err(fail("join cgroup"))?;
            joined.push(p);
        }
    }
    let setup_ms = t_fork.elapsed().as_secs_f64() * 1e3 - fork_ms;
    // SAFETY: one byte from a static buffer into our pipe.
    if unsafe { libc::write(sync_wr.as_raw_fd(), b"G".as_ptr().cast(), 1) } != 1 {
        return Err(fail("release the init")(std::io::Error::last_os_error()));
    }
    drop(sync_wr);
    let mut r = [0u8; 1];
    match read_timeout(&report_rd, &mut r, READY_TIMEOUT) {
        // End of file: the report pipe closed at `execve`, or the init died (below).
        Ok(0) => {}
        Ok(_) => {
            let mut rest = [0u8; 5];
            let _ = read_timeout(&report_rd, &mut rest, Duration::from_secs(1));
            return Err((Some(pid), decode(id, rest[0], i32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]))));
        }
        Err(e) => return Err(fail("wait for the init")(e)),
    }
    let zombie = crate::runc::proc_state_and_start(pid as u32).is_none_or(|(state, _)| matches!(state, 'Z' | 'X'));
    if zombie {
        return Err((
            Some(pid),
            LaunchError::Init { id: id.into(), step: "execve the agent", source: std::io::Error::other("it died") },
        ));
    }
    let init_ms = t_fork.elapsed().as_secs_f64() * 1e3 - fork_ms - setup_ms;
    tracing::debug!(
        container = id,
        fork_ms,
        setup_ms,
        init_ms,
        "launch phases (fork and clone, maps and cgroup joins, the init until execve)"
    );
    Ok(pid)
}

fn decode(id: &str, step: u8, errno: i32) -> LaunchError {
    LaunchError::Init {
        id: id.into(),
        step: STEPS.get(usize::from(step)).copied().unwrap_or("start"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn init_error(id: &str, report: &OwnedFd) -> LaunchError {
    let mut msg = [0u8; 6];
    match read_timeout(report, &mut msg, Duration::from_secs(1)) {
        Ok(6) if msg[0] == b'E' => decode(id, msg[1], i32::from_le_bytes([msg[2], msg[3], msg[4], msg[5]])),
        _ => LaunchError::Init {
            id: id.into(),
            step: "start",
            source: std::io::Error::other("the intermediate process died"),
        },
    }
}

/// The intermediate child: arranges the descriptors, clones the init, reports its pid, exits.
fn intermediate(fds: [RawFd; 6], flags: libc::c_int, args: &InitArgs<'_>) -> ! {
    let report_early = fds[1];
    // Everything moves above 100 first so that placing them at 0..6 clobbers none of them.
    let mut high = [0; 6];
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: duplicating a descriptor this process holds.
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) };
        if high[i] < 0 {
            die(report_early, Step::Fds);
        }
    }
    let [sync, report, fifo, console, null, pid_wr] = high;
    // SAFETY: placing held descriptors at fixed numbers; stdio without close-on-exec.
    let ok = unsafe {
        libc::dup2(null, 0) >= 0
            && libc::dup2(console, 1) >= 0
            && libc::dup2(console, 2) >= 0
            && libc::dup3(sync, SYNC_FD, libc::O_CLOEXEC) >= 0
            && libc::dup3(report, REPORT_FD, libc::O_CLOEXEC) >= 0
            && libc::dup2(fifo, FIFO_FD) >= 0
            && libc::dup3(pid_wr, 6, libc::O_CLOEXEC) >= 0
    };
    if !ok {
        die(report_early, Step::Fds);
    }
    // Nothing else of the server's (its sockets, its database) reaches the sandbox.
    check(sys!(libc::SYS_close_range, 7u32, u32::MAX, 0u32), REPORT_FD, Step::Fds);
    let pid = sys!(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize);
    if pid == 0 {
        close(6);
        init(args);
    }
    if pid < 0 {
        die(REPORT_FD, Step::Clone);
    }
    let b = (pid as i32).to_le_bytes();
    // SAFETY: 4 bytes from the stack, then exit without running the server's destructors.
    unsafe {
        libc::write(6, b.as_ptr().cast(), 4);
        libc::_exit(0)
    }
}

/// What [`exec`] returns: the exit status (128 + n after signal n) and stdout + stderr.
#[derive(Debug)]
pub struct ExecOutput {
    /// Exit code.
    pub code: i32,
    /// stdout and stderr, interleaved.
    pub output: String,
}

/// `runc exec` for a running container the launcher made: `args` (an absolute program
/// first) runs in the container's namespaces and cgroups, as its process user with its
/// capabilities and seccomp filter (those of `config`, its `config.json`). The sandbox's own
/// commands go through its agent; this is for tests and for debugging. Blocking.
pub fn exec(
    state_root: &Path,
    id: &str,
    config: &Value,
    host: &Host,
    seccomp: Option<&Bpf>,
    args: &[&str],
) -> Result<ExecOutput, LaunchError> {
    let state: Value =
        std::fs::read(state_root.join(id).join("state.json"))
            .map_err(host_err(id, "read state.json"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| host_err(id, "parse state.json")(e.into())))?;
    let pid = state["init_process_pid"].as_i64().unwrap_or(0);
    let mut plan = plan(config, host).map_err(LaunchError::Unsupported)?;
    plan.argv = args.iter().map(cstr).collect::<Result<_, _>>().map_err(LaunchError::Unsupported)?;
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut ns = Vec::new();
    // The user namespace first: the others belong to it.
    for n in ["user", "ipc", "uts", "net", "pid", "cgroup", "mnt"] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{n}"))
            .map_err(host_err(id, format!("open its {n} namespace")))?;
        ns.push(OwnedFd::from(f));
    }
    let procs: Vec<CString> = state["cgroup_paths"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, p)| p.as_str())
        .map(|p| CString::new(format!("{p}/cgroup.procs")).unwrap_or_default())
        .collect();
    let (out_rd, out_wr) = pipe().map_err(host_err(id, "make a pipe"))?;
    let (rep_rd, rep_wr) = pipe().map_err(host_err(id, "make a pipe"))?;
    let ns_fds: Vec<RawFd> = ns.iter().map(|f| f.as_raw_fd()).collect();
    let cap_last = host.cap_last;
    let (out_fd, rep_fd) = (out_wr.as_raw_fd(), rep_wr.as_raw_fd());
    // SAFETY: as in `create`: the child only makes system calls on memory prepared above.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(host_err(id, "fork")(std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: stdio onto the output pipe; /dev/null is not needed (stdin closed).
        unsafe {
            libc::dup2(out_fd, 1);
            libc::dup2(out_fd, 2);
            libc::close(0);
        }
        for p in &procs {
            // SAFETY: a NUL-terminated cgroup.procs path; "0" means this process.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            // SAFETY: one byte from a static buffer.
            if fd < 0 || unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                die(rep_fd, Step::Sync);
            }
            close(fd);
        }
        for fd in &ns_fds {
            // SAFETY: joining a namespace by descriptor.
            if unsafe { libc::setns(*fd, 0) } < 0 {
                die(rep_fd, Step::Clone);
            }
        }
        // SAFETY: the root of the joined mount namespace.
        unsafe { libc::chdir(c"/".as_ptr()) };
        // The pid namespace applies to children: the command runs in a second child.
        // SAFETY: single-threaded here; the grandchild goes on with prepared memory only.
        let grandchild = unsafe { libc::fork() };
        if grandchild == 0 {
            finalize(&plan, seccomp, cap_last, rep_fd);
            // SAFETY: null-terminated arrays of live C strings.
            unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
            die(rep_fd, Step::Exec);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, then leaving with its status.
        unsafe {
            libc::waitpid(grandchild, &mut status, 0);
            let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
            libc::_exit(code)
        }
    }
    drop((out_wr, rep_wr, ns));
    let mut output = Vec::new();
    let mut f = std::fs::File::from(out_rd);
    let _ = std::io::Read::read_to_end(&mut f, &mut output);
    let mut status = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let mut msg = [0u8; 6];
    if let Ok(6) = read_timeout(&rep_rd, &mut msg, Duration::from_millis(100))
        && msg[0] == b'E'
    {
        return Err(decode(id, msg[1], i32::from_le_bytes([msg[2], msg[3], msg[4], msg[5]])));
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Ok(ExecOutput { code, output: String::from_utf8_lossy(&output).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/other rw - cgroup cgroup rw,pids
";

    #[test]
    fn cgroup_v1_hierarchies_are_read_from_mountinfo_with_runcs_keys_and_options() {
        let h = hierarchies(MOUNTINFO);
        let got: Vec<(&str, &str, Vec<&str>)> = h
            .iter()
            .map(|h| (h.dir.as_str(), h.options.as_str(), h.keys.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("cpu,cpuacct", "cpu,cpuacct", vec!["cpu", "cpuacct"]),
                ("memory", "memory", vec!["memory"]),
                ("systemd", "none,name=systemd", vec!["name=systemd"]),
            ],
            "cgroup2 and hierarchies outside /sys/fs/cgroup are not v1 hierarchies to join"
        );
    }

    fn host() -> Host {
        Host { hierarchies: hierarchies(MOUNTINFO), kcore: true, cap_last: 40 }
    }

    fn sandbox_config() -> Value {
        let p = crate::oci::BundleParams {
            id: "x".into(),
            rootfs: "/r".into(),
            hostname: "h".into(),
            entrypoint: vec![],
            env: vec![],
            workdir: None,
            user: crate::user::ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into(),
                name: None,
            },
            cpu: 1,
            memory_mib: 64,
            pids: 64,
            privileged: false,
            cgroups_path: "/cove/x".into(),
            network_hook: None,
            idmap: Some(crate::userns::IdRange { start: 100_000, count: 65536 }),
            agent_binary: "/a".into(),
            toolbox_dir: "/t".into(),
            etc_hosts: "/e/hosts".into(),
            etc_hostname: "/e/hostname".into(),
            etc_resolv: "/e/resolv.conf".into(),
            ca_bundle: None,
            host_caps: u64::MAX,
            nofile: 1024,
            seccomp: Some(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO"})),
            engine: None,
        };
        crate::oci::config(&p)
    }

    #[test]
    fn the_launcher_takes_the_config_cove_makes_and_leaves_everything_else_to_runc() {
        let c = sandbox_config();
        assert_eq!(supports(&c, &host()), Ok(()));
        assert!(supports(&c, &Host::default()).unwrap_err().contains("cgroup v1"));
        let mut hooked = c.clone();
        hooked["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/true"}]});
        assert_eq!(supports(&hooked, &host()).unwrap_err(), "hooks");
        let mut gpu = c.clone();
        gpu["linux"]["devices"] = serde_json::json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]);
        assert_eq!(supports(&gpu, &host()).unwrap_err(), "device nodes");
        let mut privileged = c.clone();
        privileged["linux"].as_object_mut().unwrap().remove("uidMappings");
        assert_eq!(supports(&privileged, &host()).unwrap_err(), "no user namespace");
        let mut shared = c.clone();
        shared["mounts"][0]["options"] = serde_json::json!(["rshared"]);
        assert_eq!(supports(&shared, &host()).unwrap_err(), "mount propagation rshared");
        let mut joined = c;
        joined["linux"]["namespaces"][0]["path"] = serde_json::json!("/proc/1/ns/pid");
        assert_eq!(supports(&joined, &host()).unwrap_err(), "a namespace to join");
    }

    #[test]
    fn mount_targets_are_made_component_by_component_and_dot_dot_is_refused() {
        let c = creates("/.cove/cove-agent", true).unwrap();
        let got: Vec<(&str, &str, bool)> =
            c.iter().map(|c| (c.parent.to_str().unwrap(), c.name.to_str().unwrap(), c.dir)).collect();
        assert_eq!(got, [(".", ".cove", true), (".cove", "cove-agent", false)]);
        assert!(creates("/etc/../../host", false).is_err());
    }

    #[test]
    fn mount_options_map_to_flags_and_data_and_clearing_ones_are_refused() {
        let o = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (flags, rec, data) = o(&["rbind", "nosuid", "nodev", "ro", "mode=755", "size=65536k"]).unwrap();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY);
        assert!(rec);
        assert_eq!(data, ["mode=755", "size=65536k"]);
        assert!(o(&["suid"]).unwrap_err().contains("suid"));
    }

    #[test]
    fn the_state_file_names_every_hierarchy_and_starts_as_a_stopped_container() {
        let tmp = tempfile::tempdir().unwrap();
        let c = sandbox_config();
        let paths = cgroup_paths(&c, &host()).unwrap();
        assert_eq!(
            paths.iter().map(|(k, p)| format!("{k}={}", p.display())).collect::<Vec<_>>(),
            [
                "cpu=/sys/fs/cgroup/cpu,cpuacct/cove/x",
                "cpuacct=/sys/fs/cgroup/cpu,cpuacct/cove/x",
                "memory=/sys/fs/cgroup/memory/cove/x",
                "name=systemd=/sys/fs/cgroup/systemd/cove/x",
            ]
        );
        std::fs::create_dir(tmp.path().join("x")).unwrap();
        write_state(&tmp.path().join("x"), "x", 0, 0, &paths).unwrap();
        let runc = crate::runc::Runc::new(tmp.path());
        assert_eq!(runc.read_state("x"), Some(crate::runc::State { status: "stopped".into(), pid: 0 }));
        let mut bad = c;
        bad["linux"]["cgroupsPath"] = serde_json::json!("/cove/../x");
        assert!(cgroup_paths(&bad, &host()).is_err());
    }

    #[test]
    fn mount_targets_resolve_through_an_images_links_inside_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("../run/systemd/stub.conf", root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("/../../../../tmp/x", root.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("link")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(root, "/etc/resolv.conf"), "run/systemd/stub.conf");
        assert_eq!(resolve_in_root(root, "/etc/hosts"), "tmp/x");
        assert_eq!(resolve_in_root(root, "/link/../link/file"), "real/file");
        assert_eq!(resolve_in_root(root, "/proc"), "proc");
        assert!(!resolve_in_root(root, "/loop1").is_empty(), "a loop ends");
    }

    #[test]
    fn fd_paths_are_spelled_without_allocation() {
        let p = FdPath::new(1234);
        // SAFETY: FdPath is NUL-terminated.
        assert_eq!(unsafe { CStr::from_ptr(p.ptr()) }.to_str().unwrap(), "/proc/self/fd/1234");
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(FdPath::new(0).ptr()) }.to_str().unwrap(), "/proc/self/fd/0");
    }
}
