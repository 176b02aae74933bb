//! [`Runtime`]: the lifecycle of sandboxes as OCI bundles under `<root>/<id>/`.
//!
//! ```text
//! <root>/<id>/
//!   spec.json      SandboxSpec + allocated IP (the durable record; written atomically)
//!   config.json    generated OCI runtime spec (regenerated at every start)
//!   disk.img       ext4, size = disk_mib, every block allocated; survives stop (taken from <root>/.pool/
//!                  when a pre-formatted image of that size is ready, see `pool`)
//!   disk/          loop mount of disk.img: upper/ work/
//!   rootfs/        overlay of the image (lower) and disk/upper
//!   toolbox/       tmpfs (1 MiB, owned by the sandbox user), bind-mounted rw at /run/cove:
//!                  the agent's toolbox.sock and the env file (written with `write_beneath`)
//!   log/           tmpfs (4 MiB, root only): console.log, the sandbox's stdout/stderr
//!   etc/           generated hosts, hostname, resolv.conf (bind-mounted)
//!   runc.log       runc's own log
//!   exit.json      what was observed when it last stopped (OOM)
//! ```
//!
//! The bundle and `etc/` are mode 0710 with the group of the sandboxes' root (runc's init,
//! inside the user namespace, must reach the mount sources); files holding the environment
//! (`spec.json`, `config.json`) are 0600. Unprivileged sandboxes run in a user namespace
//! (see `userns`): the image is an idmapped lower layer, the disk's `upper/` holds host ids.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_types::fs::write_atomic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cgroup;
use crate::disk::{self, DiskError};
use crate::firewall::FirewallConfig;
use crate::net::{self, Cidr, NetError};
use crate::netpolicy::{Ipv4Net, NetPolicy};
use crate::oci::{self, BundleParams};
use crate::pool::DiskPool;
use crate::runc::{Runc, RuncError};
use crate::seccomp::{self, SeccompError};
use crate::user::{self, UserError};
use crate::userns::{IdRange, Userns, UsernsError};

/// How a [`Runtime`] lays out and isolates its sandboxes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `<data-dir>/sandboxes`: one bundle directory per sandbox.
    pub root: PathBuf,
    /// runc's state directory (`runc --root`), e.g. `/run/cove/runc`.
    pub runc_root: PathBuf,
    /// Host path of the static in-sandbox agent, bind-mounted read-only.
    pub agent_binary: PathBuf,
    /// Bridge name, e.g. `cove0` (at most 15 bytes).
    pub bridge: String,
    /// e.g. `10.213.0.0/24`: `.1` is the bridge, sandboxes get the rest.
    pub cidr: String,
    /// e.g. `/cove` → cgroupsPath `/cove/<id>`.
    pub cgroup_parent: String,
    /// Short prefix (1–7 alphanumerics) for netns and veth names, e.g. `cv`.
    pub name_prefix: String,
    /// Docker-format seccomp profile; `None` ⇒ Docker's default, [`seccomp::EMBEDDED_PROFILE`].
    pub seccomp_profile: Option<PathBuf>,
    /// Host ids of unprivileged sandboxes and build steps: sandbox id `n` is `start + n`.
    pub userns: IdRange,
    /// PEM certificates added to every sandbox's and build step's trust store
    /// (`--sandbox-ca-bundle`; see [`crate::cabundle`]).
    pub ca_bundle: Option<PathBuf>,
    /// Sandboxes reach beyond the bridge (routed, masqueraded); off: only linked sandboxes
    /// reach each other (see [`crate::firewall`]).
    pub egress: bool,
    /// Private networks (RFC 1918, CGNAT) sandboxes may reach after all (`--sandbox-allow-private`).
    pub allow_private: Vec<Ipv4Net>,
    /// CDI spec directories the GPUs are read from at start (`--cdi-spec-dir`; see
    /// [`crate::gpu`]); empty: no GPUs.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Sandbox disks are sparse, promised rather than allocated (`--sandbox-disks=sparse`):
    /// creates need only the reserve free, so many more sandboxes fit the data filesystem,
    /// but a full filesystem then fails writes in every sandbox (they go read-only and are
    /// reported `error`). Off (the default): each disk is allocated in full at create.
    pub sparse_disks: bool,
    /// Sandboxes are started by Cove's launcher ([`crate::launch`]) where it covers their
    /// config (`--launcher native`); else, and always for build steps, by runc.
    pub native_launcher: bool,
}

/// What to run and with which limits; persisted in the bundle so `start` can recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id (a uuid string; letters, digits, `-` and `_`).
    pub id: String,
    /// Read-only unpacked image rootfs (the overlay's lower dir).
    pub lower: PathBuf,
    /// Passed as arguments to the agent.
    pub entrypoint: Vec<String>,
    /// `K=V` (image env + user env); `HOME`/`PATH` defaults are added when missing.
    pub env: Vec<String>,
    /// Image `WORKDIR`.
    pub workdir: Option<String>,
    /// Image `USER`: name, uid, `uid:gid` or `name:group`.
    pub user: Option<String>,
    /// vCPUs: CFS quota `cpu * 100000` per period `100000`.
    pub cpu: u32,
    /// Memory limit in MiB; swap is limited to the same (no swap beyond it).
    pub memory_mib: u64,
    /// Size of the writable disk in MiB.
    pub disk_mib: u64,
    /// Process limit.
    pub pids: u32,
    /// All capabilities, no seccomp, no masked paths.
    pub privileged: bool,
    /// GPUs it takes at every start (through CDI, see [`crate::gpu`]); 0: no edits at all.
    #[serde(default)]
    pub gpu: u32,
    /// Container-engine mode (Docker-in-Docker): what an engine inside needs, in the
    /// sandbox's own user namespace: every capability there, Docker's seccomp profile for
    /// that set, writable sysfs, cgroups it owns, `/proc/sys` writable for its namespaces'
    /// sysctls, and `/var/lib/docker` on the sandbox's ext4 disk (`<disk>/engine`). Started
    /// by runc, not the launcher. Ignored for privileged sandboxes (they have all of it).
    #[serde(default)]
    pub engine: bool,
}

/// What a sandbox is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Its init process is alive (also while paused).
    Running {
        /// Host pid of the sandbox's init (the agent).
        pid: u32,
    },
    /// The bundle exists but nothing runs. `exit_code` is `None` when unknown: a detached
    /// container's init is reaped by the host's PID 1, not by us.
    Stopped {
        /// Exit code when known.
        exit_code: Option<i32>,
        /// The kernel OOM-killed a process of the sandbox during its last run.
        oom_killed: bool,
    },
    /// No bundle and no container.
    Missing,
}

/// A failed runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration value is unusable.
    #[error("invalid runtime configuration: {field}: {why}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A spec value is unusable.
    #[error("invalid sandbox spec {id:?}: {why}")]
    InvalidSpec {
        /// The sandbox id.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// The seccomp profile could not be loaded or converted.
    #[error("load seccomp profile")]
    Seccomp(#[source] Box<SeccompError>),
    /// A runtime directory could not be created or listed.
    #[error("prepare directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The user namespace for sandboxes could not be made or used.
    #[error("sandbox user namespace")]
    Userns(#[source] Box<UsernsError>),
    /// A build step's changes could not be copied off its disk.
    #[error("copy the step's changes off its disk")]
    CopyOut(#[source] Box<crate::copytree::CopyTreeError>),
    /// The bridge could not be set up.
    #[error("set up the sandbox network")]
    Bridge(#[source] Box<NetError>),
    /// The host could not be fenced off from the bridge.
    #[error("protect the host from sandboxes")]
    Firewall(#[source] Box<crate::firewall::FirewallError>),
    /// The parent cgroup's process limit could not be set.
    #[error("limit the processes of all sandboxes")]
    ParentPids(#[source] Box<cgroup::CgroupError>),
    /// No bundle with that id.
    #[error("sandbox {id} not found")]
    NotFound {
        /// The sandbox id.
        id: String,
    },
    /// A bundle with that id exists.
    #[error("sandbox {id} already exists")]
    AlreadyExists {
        /// The sandbox id.
        id: String,
    },
    /// `start_prepared` of a sandbox that is not waiting in runc's `created` state.
    #[error("sandbox {id} is not prepared to start (it is {state})")]
    NotPrepared {
        /// The sandbox id.
        id: String,
        /// What runc says it is.
        state: String,
    },
    /// Every address of the CIDR is taken.
    #[error("no free address left in {cidr}")]
    NoFreeAddress {
        /// The network.
        cidr: String,
    },
    /// Reading or writing a bundle file failed.
    #[error("{op} {path}")]
    BundleFile {
        /// `read`, `write` or `parse`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating, mounting or unmounting the sandbox's disk or overlay failed.
    #[error("storage of sandbox {id}")]
    Storage {
        /// The sandbox id.
        id: String,
        /// Cause.
        #[source]
        source: Box<DiskError>,
    },
    /// Setting up or tearing down the sandbox's network namespace failed.
    #[error("network of sandbox {id}")]
    Network {
        /// The sandbox id.
        id: String,
        /// Cause.
        #[source]
        source: Box<NetError>,
    },
    /// A task of a start ended without an answer (it panicked, or the runtime is shutting
    /// down).
    #[error("{step} of sandbox {id} ended without an answer: {why}")]
    TaskLost {
        /// The sandbox id.
        id: String,
        /// What the task did.
        step: &'static str,
        /// The join error.
        why: String,
    },
    /// The image's `USER` could not be resolved.
    #[error("resolve the user of sandbox {id}")]
    ResolveUser {
        /// The sandbox id.
        id: String,
        /// Cause.
        #[source]
        source: UserError,
    },
    /// runc failed.
    #[error("runc")]
    Runc(#[source] Box<RuncError>),
    /// Cove's launcher failed.
    #[error("launch the sandbox's container")]
    Launch(#[source] Box<crate::launch::LaunchError>),
    /// A sandbox cannot be linked that way (to itself).
    #[error("cannot link sandbox {a} with {b}: {why}")]
    InvalidLink {
        /// One sandbox.
        a: String,
        /// The other.
        b: String,
        /// What is wrong.
        why: String,
    },
    /// A sandbox's network policy or links could not be applied in the firewall.
    #[error("{op} sandbox {id}")]
    NetworkPolicy {
        /// What was attempted (`apply the network policy of`, `link`, …).
        op: &'static str,
        /// The sandbox id.
        id: String,
        /// Cause.
        #[source]
        source: Box<crate::firewall::FirewallError>,
    },
    /// Not enough GPUs are free for the sandbox.
    #[error("sandbox {id}")]
    NoFreeGpu {
        /// The sandbox id.
        id: String,
        /// Requested, free and total.
        #[source]
        source: crate::gpu::NoFreeGpu,
    },
    /// The CDI edits of the sandbox's GPUs could not be applied.
    #[error("give sandbox {id} its GPUs")]
    Gpu {
        /// The sandbox id.
        id: String,
        /// Cause.
        #[source]
        source: Box<crate::cdi::CdiError>,
    },
    /// Removing the bundle directory failed.
    #[error("remove bundle {path}")]
    RemoveBundle {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The error class for the API layer.
    pub fn kind(&self) -> cove_types::ErrorKind {
        use cove_types::ErrorKind as K;
        match self {
            Self::InvalidSpec { .. } | Self::ResolveUser { .. } | Self::InvalidLink { .. } => K::InvalidArgument,
            Self::NotFound { .. } => K::NotFound,
            Self::AlreadyExists { .. } => K::AlreadyExists,
            Self::NotPrepared { .. } => K::FailedPrecondition,
            Self::NoFreeAddress { .. } => K::Unavailable,
            Self::NoFreeGpu { .. } => K::Exhausted,
            // A disk that cannot be guaranteed: the same create succeeds once space is freed.
            Self::Storage { source, .. } if matches!(**source, DiskError::NoSpace { .. }) => K::Exhausted,
            // An earlier mount of the disk still going away: a retry shortly succeeds.
            Self::Storage { source, .. } if matches!(**source, DiskError::StillAttached { .. }) => K::Unavailable,
            Self::InvalidConfig { .. }
            | Self::Seccomp(_)
            | Self::Dir { .. }
            | Self::Bridge(_)
            | Self::Userns(_)
            | Self::CopyOut(_)
            | Self::Firewall(_)
            | Self::ParentPids(_)
            | Self::BundleFile { .. }
            | Self::Storage { .. }
            | Self::Network { .. }
            | Self::TaskLost { .. }
            | Self::Runc(_)
            | Self::Launch(_)
            | Self::RemoveBundle { .. }
            | Self::Gpu { .. }
            | Self::NetworkPolicy { .. } => K::Internal,
        }
    }
}

impl From<RuncError> for RuntimeError {
    fn from(e: RuncError) -> Self {
        RuntimeError::Runc(Box::new(e))
    }
}

/// What happens once runc created the container and its network is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// Its process starts at once (as `runc run -d` would).
    Run,
    /// It waits, everything set up, for [`Runc::start`] (the warm pool).
    Create,
}

/// The durable per-sandbox record (`spec.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: SandboxSpec,
    ip: Ipv4Addr,
    /// The id range the disk's `upper/` is owned in (host ids `start + n`); `None` for
    /// privileged sandboxes and for disks written before user namespaces (image ids), which
    /// are shifted once at their next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disk_ids: Option<IdRange>,
    /// Outbound policy, enforced by [`crate::firewall`] on the sandbox's address.
    #[serde(default)]
    policy: NetPolicy,
    /// Ids of linked sandboxes (they reach each other; each has the other in `/etc/hosts`).
    #[serde(default)]
    links: Vec<String>,
    /// Names the sandbox answers to in its own and its linked peers' `/etc/hosts` besides its
    /// short id (its name in the API).
    #[serde(default)]
    host_names: Vec<String>,
    /// CDI names of the GPUs it holds while it runs (taken at start, freed at stop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpus: Vec<String>,
}

/// What was seen when the sandbox last stopped (`exit.json`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct LastExit {
    exit_code: Option<i32>,
    oom_killed: bool,
}

/// The smallest sandbox disk.
const MIN_DISK_MIB: u64 = 8;
const SPEC_FILE: &str = "spec.json";
/// Pre-formatted disk images, under the root (so a rename moves one into a bundle); not a
/// valid sandbox id, so never listed as one.
const POOL_DIR: &str = ".pool";
const EXIT_FILE: &str = "exit.json";
/// Size of a sandbox's toolbox tmpfs (its socket and the env file).
const TOOLBOX_TMPFS_KIB: u64 = 1024;
/// Size of the tmpfs holding a sandbox's console log (the agent's stdout and stderr): a
/// sandbox that writes more to `/proc/1/fd/1` gets ENOSPC, the host disk nothing.
const CONSOLE_TMPFS_KIB: u64 = 4096;
/// The host side of [`oci::ENV_FILE`], in the bundle's toolbox directory.
const ENV_FILE: &str = "toolbox/env";
/// How long to wait for a container to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Runs sandboxes with runc. Sandboxes outlive the process: a new `Runtime` over the same
/// directories finds them again (`list`, `status`).
#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    cidr: Cidr,
    runc: Runc,
    seccomp: Value,
    /// The profile for container-engine sandboxes ([`SandboxSpec::engine`]).
    seccomp_engine: Value,
    /// `seccomp` compiled once, for the launcher.
    seccomp_bpf: Arc<crate::seccomp::Bpf>,
    /// What the launcher knows of the host (cgroup hierarchies).
    launch_host: Arc<crate::launch::Host>,
    host_caps: u64,
    ips: Mutex<HashMap<String, Ipv4Addr>>,
    /// Policies of sandboxes with a restricted one, by id (what the DNS forwarder asks).
    policies: Mutex<HashMap<String, NetPolicy>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pool: Arc<DiskPool>,
    userns: Userns,
    gpus: crate::gpu::Gpus,
    /// Launches (mounts, config, runc) running at once: [`launch_permits`]. A burst of
    /// creates otherwise runs a hundred runc processes side by side, which finish no sooner
    /// in total and starve the server's own threads (every other request waits for CPU).
    launches: tokio::sync::Semaphore,
}

/// Launches allowed at once: two per CPU (a launch waits on the kernel and on runc's
/// children about half of its time).
fn launch_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// Valid ids: 1–64 of `[A-Za-z0-9_-]`, at least 8 of them alphanumeric (names derive from them).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && id.bytes().filter(u8::is_ascii_alphanumeric).count() >= 8
}

/// Replaces `path` atomically (temp file + rename) without fsync: for the files regenerated
/// at every start (`config.json`, `etc/*`), which need no durability.
fn write_replace(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    std::io::Write::write_all(&mut f, data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Makes `dir` owned by root with group `gid` and mode 0710: the sandboxes' root (host uid
/// and gid `gid`) can pass through it to a bundle's mount sources, host users cannot.
pub(crate) fn restrict_dir(dir: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
}

/// Replaces `dir/name` with `data` where `dir` is writable by a sandbox: the file is made
/// with `O_EXCL` under a fresh name, relative to a descriptor of `dir`, resolving nothing
/// outside it and no symlink (`openat2` `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), mode 0600,
/// owned by the owner of `dir` (the sandbox user that reads it), then renamed over `name`
/// within the same directory. A link planted by the sandbox is replaced, never followed.
pub(crate) fn write_beneath(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dirfd =
        rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY, Mode::empty())?;
    let tmp = format!(".{name}.{}", uuid::Uuid::new_v4().simple());
    let resolve =
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let fd = rustix::fs::openat2(
        &dirfd,
        tmp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        resolve,
    )?;
    let written = (|| {
        let owner = rustix::fs::fstat(&dirfd)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(owner.st_uid)),
            Some(rustix::fs::Gid::from_raw(owner.st_gid)),
        )?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, data)?;
        rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, name).map_err(std::io::Error::from)
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dirfd, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    written
}

/// The engine's data directory on a container-engine sandbox's disk (mounted at
/// [`oci::ENGINE_DATA_DIR`]).
const ENGINE_DIR: &str = "engine";

/// Makes `dir` (on the sandbox's disk; an existing one must be a directory, not a link),
/// owned by the sandbox's root.
fn make_engine_dir(dir: &Path, userns: Option<&Userns>) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(std::io::Error::other("exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)?,
        Err(e) => return Err(e),
    }
    if let Some(ns) = userns {
        ns.chown_root(dir).map_err(std::io::Error::other)?;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o710))
}

/// Milliseconds since `t`, with a fraction (for the per-phase debug logs).
fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// The first `n` alphanumerics of the id, lower-cased.
fn short_id(id: &str, n: usize) -> String {
    id.chars().filter(char::is_ascii_alphanumeric).take(n).map(|c| c.to_ascii_lowercase()).collect()
}

fn io_file(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::BundleFile { op, path, source }
}

/// Sandboxes ask the server's DNS forwarder on the gateway (the host's own resolvers are
/// loopback stubs or private addresses the firewall forbids), with the host's `search` and
/// `options` lines.
fn resolv_conf(gateway: Ipv4Addr) -> String {
    sandbox_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), gateway)
}

fn sandbox_resolv_conf(host: &str, gateway: Ipv4Addr) -> String {
    let mut out = format!("nameserver {gateway}\n");
    for line in host.lines() {
        if matches!(line.split_whitespace().next(), Some("search" | "domain" | "options")) {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

impl Runtime {
    /// Validates `cfg`, creates the directories and the bridge (idempotent), loads the seccomp
    /// profile and finds the addresses of existing sandboxes.
    pub async fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let bad = |field, why: &str| RuntimeError::InvalidConfig { field, why: why.into() };
        if cfg.name_prefix.is_empty()
            || cfg.name_prefix.len() > 7
            || !cfg.name_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad("name_prefix", "must be 1 to 7 ASCII letters or digits"));
        }
        if cfg.bridge.is_empty() || cfg.bridge.len() > 15 || cfg.bridge.contains(['/', ' ']) {
            return Err(bad("bridge", "must be a 1 to 15 byte interface name"));
        }
        if !cfg.cgroup_parent.starts_with('/') || cfg.cgroup_parent.contains("..") {
            return Err(bad("cgroup_parent", "must be an absolute cgroup path like /cove"));
        }
        if !cfg.agent_binary.is_file() {
            return Err(bad("agent_binary", &format!("{} is not a file", cfg.agent_binary.display())));
        }
        let cidr = Cidr::parse(&cfg.cidr).map_err(|e| bad("cidr", &e.to_string()))?;
        if let Some(ca) = &cfg.ca_bundle {
            crate::cabundle::load_extra(ca).map_err(|e| bad("ca_bundle", &cove_types::error::chain(&e)))?;
        }
        let mut cfg = cfg;
        for p in [&mut cfg.root, &mut cfg.runc_root] {
            std::fs::create_dir_all(&*p).map_err(|source| RuntimeError::Dir { path: p.clone(), source })?;
            *p = std::fs::canonicalize(&*p).map_err(|source| RuntimeError::Dir { path: p.clone(), source })?;
        }

        let profile = seccomp::load_or_embedded(cfg.seccomp_profile.as_deref())
            .map_err(|e| RuntimeError::Seccomp(Box::new(e)))?;
        let host_caps = oci::host_capabilities();
        let caps = oci::capabilities(false, host_caps);
        let target = seccomp::Target { arch: seccomp::host_arch(), caps: &caps, kernel: seccomp::host_kernel() };
        let seccomp = seccomp::convert(&profile, &target).map_err(|e| RuntimeError::Seccomp(Box::new(e)))?;
        let seccomp_bpf = Arc::new(seccomp::compile(&seccomp).map_err(|e| RuntimeError::Seccomp(Box::new(e)))?);
        let seccomp_engine = seccomp::engine(&profile, host_caps).map_err(|e| RuntimeError::Seccomp(Box::new(e)))?;
        let launch_host = Arc::new(crate::launch::Host::discover());

        // The table (installed below, with every record's policy and links) needs the bridge;
        // until then an earlier run's table, full or locked down, stays in force.
        net::ensure_bridge(&cfg.bridge, &cidr).await.map_err(|e| RuntimeError::Bridge(Box::new(e)))?;
        cgroup::limit_parent_pids(&cfg.cgroup_parent).map_err(|e| RuntimeError::ParentPids(Box::new(e)))?;
        match cgroup::favor_dynamic_mods() {
            Ok(Some(at)) => tracing::info!(
                mount = %at.display(),
                "mounted cgroup2 with favordynmods: a sandbox start no longer waits ~15 ms for an RCU grace period"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot set favordynmods on cgroup2: each start waits for an RCU grace period")
            }
        }
        match crate::userns::ensure_key_quota() {
            Ok(changed) => {
                for (sysctl, from, to) in changed {
                    tracing::info!(sysctl, from, to, "raised the per-user key quota: each sandbox holds one keyring");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the per-user key quota: about 200 sandboxes at most"),
        }
        let pool_dir = cfg.root.join(POOL_DIR);
        let pool = DiskPool::open(pool_dir.clone()).map_err(|source| RuntimeError::Dir { path: pool_dir, source })?;
        pool.set_sparse(cfg.sparse_disks);

        let userns = Userns::new(cfg.userns).map_err(|e| RuntimeError::Userns(Box::new(e)))?;
        // runc's init runs as the sandbox's root (host `start`): it must be able to reach the
        // bundle's mount sources, but no host user may (0710, group = sandbox root).
        restrict_dir(&cfg.root, cfg.userns.start)
            .map_err(|source| RuntimeError::Dir { path: cfg.root.clone(), source })?;
        // No CDI mount may expose the data dir (the parent of `root`) or runc's state.
        let protected: Vec<PathBuf> =
            cfg.root.parent().into_iter().map(Path::to_path_buf).chain([cfg.runc_root.clone()]).collect();
        let gpus = crate::gpu::Gpus::discover(&cfg.cdi_spec_dirs, &protected)
            .await
            .map_err(|e| bad("cdi_spec_dirs", &cove_types::error::chain(&e)))?;
        let rt = Runtime {
            gpus,
            userns,
            pool: Arc::new(pool),
            runc: Runc::new(&cfg.runc_root),
            cidr,
            seccomp,
            seccomp_engine,
            seccomp_bpf,
            launch_host,
            host_caps,
            ips: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            launches: tokio::sync::Semaphore::new(launch_permits()),
            cfg,
        };
        let mut records = Vec::new();
        for id in rt.list().await? {
            match rt.read_record(&id) {
                Ok(r) => {
                    rt.ips_lock().insert(id.clone(), r.ip);
                    // A sandbox runc knows holds its GPUs until it is stopped.
                    if !r.gpus.is_empty() && rt.runc.container_ids().contains(&id) {
                        rt.gpus.adopt(&id, &r.gpus);
                    }
                    if r.policy.is_restricted() {
                        rt.policies_lock().insert(id, r.policy.clone());
                    }
                    records.push(r);
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "unreadable sandbox record")
                }
            }
        }
        rt.install_firewall(&records).await?;
        rt.remove_step_leftovers().await;
        tracing::info!(root = %rt.cfg.root.display(), bridge = %rt.cfg.bridge, cidr = %rt.cidr, "runtime ready");
        Ok(rt)
    }

    fn ips_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Addr>> {
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serializes lifecycle operations per sandbox.
    pub(crate) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    pub(crate) fn bundle(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}{}", self.cfg.name_prefix, short_id(id, 8))
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("{}/{}", self.cfg.cgroup_parent.trim_end_matches('/'), id)
    }

    /// The sandbox's cgroup directory for `controller` (v1) or its unified directory (v2).
    pub fn cgroup_dir(&self, id: &str, controller: &str) -> PathBuf {
        cgroup::dir(controller, &self.cgroups_path(id))
    }

    /// Name of the sandbox's network namespace (under `/var/run/netns`) and of its host veth.
    pub fn netns(&self, id: &str) -> String {
        self.netns_name(id)
    }

    /// Host path of the agent's unix socket: `<root>/<id>/toolbox/toolbox.sock`. The directory
    /// is writable by the sandbox: check that the path is a socket (not a symlink) before use.
    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.bundle(id).join("toolbox/toolbox.sock")
    }

    /// Path of the sandbox's console log (its stdout and stderr).
    pub fn console_path(&self, id: &str) -> PathBuf {
        self.bundle(id).join("log/console.log")
    }

    /// The sandbox's address on the bridge network.
    pub fn ip(&self, id: &str) -> Option<Ipv4Addr> {
        self.ips_lock().get(id).copied()
    }

    /// The runc state directory (for `runc --root` in diagnostics and tests).
    pub fn runc_root(&self) -> &Path {
        &self.cfg.runc_root
    }

    /// Keeps pre-formatted disk images of `size_mib` ready (in the background, from now on),
    /// so that creates of that size skip `mkfs.ext4`. Sizes that creates ask for are kept
    /// ready anyway after their first create; this warms one before any. Needs a tokio
    /// runtime; sizes below the minimum disk are ignored.
    pub fn warm_disk_pool(&self, size_mib: u64) {
        if size_mib < MIN_DISK_MIB {
            return;
        }
        self.pool.note_size(size_mib);
        self.pool.refill();
    }

    /// Bytes that must stay free on the data filesystem after a new disk is allocated
    /// (`--disk-reserve`, for the database and the blobs); a create or pool image that would
    /// eat into them is refused with [`disk::DiskError::NoSpace`].
    pub fn set_disk_reserve(&self, bytes: u64) {
        self.pool.set_reserve(bytes);
    }

    /// See [`Runtime::set_disk_reserve`].
    pub fn disk_reserve(&self) -> u64 {
        self.pool.reserve()
    }

    /// Whether a new `disk_mib` disk can be guaranteed now: a pre-made one of that size is
    /// ready, or allocating one leaves the reserve free (with sparse disks: the reserve is
    /// free). The error names free and needed bytes.
    pub fn check_disk_room(&self, disk_mib: u64) -> Result<(), disk::DiskError> {
        if self.pool.ready(disk_mib) > 0 {
            return Ok(());
        }
        let needed = if self.cfg.sparse_disks { 0 } else { disk_mib << 20 };
        disk::check_room(&self.cfg.root, needed, self.disk_reserve())
    }

    /// Sandboxes whose disk's filesystem went read-only (after an I/O or consistency error),
    /// with the kernel's mount options: id → options.
    pub fn failed_disks(&self) -> HashMap<String, String> {
        disk::read_only_disks(&self.cfg.root)
    }

    /// Pre-formatted images of `size_mib` ready to be taken (diagnostics and tests).
    pub fn disk_pool_ready(&self, size_mib: u64) -> usize {
        self.pool.ready(size_mib)
    }

    fn read_record(&self, id: &str) -> Result<Record, RuntimeError> {
        let path = self.bundle(id).join(SPEC_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::NotFound { id: id.into() }
            } else {
                io_file("read", &path)(e)
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| io_file("parse", &path)(e.into()))
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let bad = |why: &str| RuntimeError::InvalidSpec { id: spec.id.clone(), why: why.into() };
        if !valid_id(&spec.id) {
            return Err(bad("id must be 1-64 of [A-Za-z0-9_-] with at least 8 letters or digits"));
        }
        if !spec.lower.is_absolute() || !spec.lower.is_dir() {
            return Err(bad(&format!("lower {} is not an absolute directory", spec.lower.display())));
        }
        if spec.cpu == 0 || spec.memory_mib < 6 || spec.disk_mib < MIN_DISK_MIB || spec.pids == 0 {
            return Err(bad("cpu and pids must be positive, memory at least 6 MiB, disk at least 8 MiB"));
        }
        if spec.env.iter().any(|e| !e.contains('=') || e.contains('\0')) {
            return Err(bad("env entries must be K=V without NUL"));
        }
        Ok(())
    }

    /// Creates the sandbox (record, disk, mounts, network, config) and starts it. On failure
    /// nothing is left behind.
    #[tracing::instrument(skip_all, fields(sandbox = %spec.id))]
    pub async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.create_with(spec, Launch::Run).await
    }

    /// Like [`Runtime::create`], but stops short of running the agent: disk, mounts, network,
    /// cgroup and namespaces are ready and runc holds the process before `execve` until
    /// [`Runtime::start_prepared`]. What a warm pool keeps, so that a create costs one
    /// `runc start`.
    #[tracing::instrument(skip_all, fields(sandbox = %spec.id))]
    pub async fn prepare(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.create_with(spec, Launch::Create).await
    }

    /// Starts a sandbox made by [`Runtime::prepare`], adding `extra_env` (`K=V`) to its
    /// environment: recorded in the spec (so later starts keep it) and handed to the agent
    /// through [`oci::ENV_FILE`].
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn start_prepared(&self, id: &str, extra_env: &[String]) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        let _guard = self.lock(id).await;
        let mut record = self.read_record(id)?;
        if extra_env.iter().any(|e| !e.contains('=') || e.contains('\0')) {
            return Err(RuntimeError::InvalidSpec { id: id.into(), why: "env entries must be K=V without NUL".into() });
        }
        if !extra_env.is_empty() {
            oci::merge_env(&mut record.spec.env, extra_env);
            let path = self.bundle(id).join(SPEC_FILE);
            let json = serde_json::to_vec_pretty(&record).map_err(|e| io_file("write", &path)(e.into()))?;
            write_atomic(&path, &json).map_err(io_file("write", &path))?;
            let env_path = self.bundle(id).join(ENV_FILE);
            write_beneath(&self.bundle(id).join("toolbox"), "env", extra_env.join("\0").as_bytes())
                .map_err(io_file("write", &env_path))?;
        }
        if !self.runc.start(id).await? {
            let state = self.runc.state(id).await?.map_or_else(|| "not running".to_string(), |s| s.status);
            return Err(RuntimeError::NotPrepared { id: id.into(), state });
        }
        tracing::info!(ms = ms(t0), "prepared sandbox started");
        Ok(())
    }

    async fn create_with(&self, spec: &SandboxSpec, launch: Launch) -> Result<(), RuntimeError> {
        self.validate(spec)?;
        let t0 = Instant::now();
        let _guard = self.lock(&spec.id).await;
        let bundle = self.bundle(&spec.id);
        match std::fs::create_dir(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: spec.id.clone() });
            }
            Err(source) => return Err(RuntimeError::Dir { path: bundle, source }),
        }
        let result = async {
            let ip = self.allocate(&spec.id)?;
            let record = Record {
                spec: spec.clone(),
                ip,
                disk_ids: (!spec.privileged).then_some(self.cfg.userns),
                policy: NetPolicy::default(),
                links: Vec::new(),
                host_names: Vec::new(),
                gpus: Vec::new(),
            };
            let path = bundle.join(SPEC_FILE);
            let json = serde_json::to_vec_pretty(&record).map_err(|e| io_file("write", &path)(e.into()))?;
            // Made durable beside the start (two fsyncs, 1–10 ms on a busy disk): a new
            // sandbox's record is needed only after the server or the host restarts.
            let sync = cove_types::fs::write_atomic_sync_later(&path, &json).map_err(io_file("write", &path))?;
            tokio::task::spawn_blocking(move || {
                if let Err(e) = sync() {
                    tracing::warn!(error = %e, "syncing a new sandbox's record failed");
                }
            });
            tracing::debug!(record_ms = ms(t0), "record written");
            self.start_locked(&record, true, launch).await
        }
        .await;
        // Replace the pool image this create took (or make the first of a new size), after
        // the create so that mkfs does not compete with it for the CPU.
        self.pool.refill();
        if let Err(e) = result {
            tracing::warn!(error = %cove_types::error::chain(&e), "create failed, removing the sandbox");
            if let Err(c) = self.remove_locked(&spec.id).await {
                tracing::warn!(error = %cove_types::error::chain(&c), "cleanup after failed create");
            }
            return Err(e);
        }
        tracing::info!(ip = ?self.ip(&spec.id), ms = t0.elapsed().as_millis() as u64, "sandbox created");
        Ok(())
    }

    fn allocate(&self, id: &str) -> Result<Ipv4Addr, RuntimeError> {
        let mut ips = self.ips_lock();
        if let Some(ip) = ips.get(id) {
            return Ok(*ip);
        }
        let used: Vec<Ipv4Addr> = ips.values().copied().collect();
        let ip =
            self.cidr.first_free(&used).ok_or_else(|| RuntimeError::NoFreeAddress { cidr: self.cidr.to_string() })?;
        ips.insert(id.to_string(), ip);
        Ok(ip)
    }

    /// Starts a stopped sandbox again from its record; its files are kept. Starting a running
    /// sandbox does nothing.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        let _guard = self.lock(id).await;
        let record = self.read_record(id)?;
        match self.runc.state(id).await? {
            Some(s) if s.status != "stopped" => return Ok(()),
            Some(_) => {
                self.record_exit(id);
                self.runc.delete(id).await?;
            }
            None => {}
        }
        self.ips_lock().insert(id.to_string(), record.ip);
        let mut record = record;
        if !record.spec.privileged && record.disk_ids != Some(self.cfg.userns) {
            self.shift_legacy_disk(&mut record).await?;
        }
        self.start_locked(&record, false, Launch::Run).await?;
        tracing::info!(ms = t0.elapsed().as_millis() as u64, "sandbox started");
        Ok(())
    }

    /// A disk written before sandboxes had user namespaces holds image ids (its sandbox ran as
    /// host root): shift its `upper/` into the range once, then record that, so that the
    /// sandbox keeps owning its files. A disk of another range is refused (the data dir's
    /// range check makes that a corrupt record).
    async fn shift_legacy_disk(&self, record: &mut Record) -> Result<(), RuntimeError> {
        let id = record.spec.id.clone();
        if let Some(other) = record.disk_ids {
            return Err(RuntimeError::InvalidSpec {
                id,
                why: format!("its disk belongs to id range {other}, the server runs sandboxes in {}", self.cfg.userns),
            });
        }
        let storage = |source: DiskError| RuntimeError::Storage { id: id.clone(), source: Box::new(source) };
        let (image, disk_dir) = (self.bundle(&id).join("disk.img"), self.bundle(&id).join("disk"));
        disk::mount_image(&image, &disk_dir).await.map_err(storage)?;
        let upper = disk_dir.join("upper");
        let ns_result = self.userns.shift_tree(&upper);
        let unmounted = disk::unmount(&disk_dir).map_err(storage);
        ns_result.map_err(|e| RuntimeError::Userns(Box::new(e)))?;
        unmounted?;
        record.disk_ids = Some(self.cfg.userns);
        let path = self.bundle(&id).join(SPEC_FILE);
        let json = serde_json::to_vec_pretty(&*record).map_err(|e| io_file("write", &path)(e.into()))?;
        write_atomic(&path, &json).map_err(io_file("write", &path))?;
        tracing::info!(sandbox = %id, range = %self.cfg.userns, "shifted a disk from before user namespaces into the sandbox ids");
        Ok(())
    }

    /// Disk (a new image first when `new_disk`), mounts, network, config and `runc run -d`;
    /// undoes mounts and network on failure.
    async fn start_locked(&self, record: &Record, new_disk: bool, launch: Launch) -> Result<(), RuntimeError> {
        let id = &record.spec.id;
        let result = self.start_steps(record, new_disk, launch).await;
        if result.is_err() {
            self.teardown(id).await;
        }
        result
    }

    /// Three independent branches run concurrently (their cost is mostly waiting for
    /// `mount`, `mkfs.ext4` and `ip`): the disk (image, loop mount, overlay, then the image's
    /// user, which lives on it), the network namespace, and the generated files. All three are
    /// awaited even when one fails, so that the caller's teardown finds everything they made.
    async fn start_steps(&self, record: &Record, new_disk: bool, launch: Launch) -> Result<(), RuntimeError> {
        let spec = &record.spec;
        let id = &spec.id;
        let gpus = self.take_gpus(record)?;
        let bundle = self.bundle(id);
        let storage = |source: DiskError| RuntimeError::Storage { id: id.clone(), source: Box::new(source) };
        let disk_dir = bundle.join("disk");
        let rootfs = bundle.join("rootfs");
        let toolbox = bundle.join("toolbox");
        let logs = bundle.join("log");
        let etc = bundle.join("etc");
        let hostname = short_id(id, 12);
        let netns = self.netns_name(id);
        let t_queued = Instant::now();
        // Never closed: acquiring fails only on a closed semaphore.
        let _permit = self.launches.acquire().await.ok();
        let queued_ms = ms(t_queued);
        let t = Instant::now();

        // Unprivileged sandboxes run in a user namespace; privileged ones as host root.
        let idmap = (!spec.privileged).then_some(self.cfg.userns);
        let userns = idmap.map(|_| &self.userns);

        // Container-engine mode: the engine's data lives on the disk, beside the overlay's.
        let engine = (spec.engine && !spec.privileged).then(|| disk_dir.join(ENGINE_DIR));
        let disk_branch = async {
            let image = bundle.join("disk.img");
            // A pooled disk usually comes mounted already (`pool`); `mount_image` then only
            // checks it.
            let pooled = new_disk && self.pool.take_mounted(spec.disk_mib, &image, &disk_dir).is_some();
            if new_disk && !pooled {
                disk::create_image(&image, spec.disk_mib, self.disk_reserve(), self.cfg.sparse_disks)
                    .await
                    .map_err(storage)?;
            }
            let image_ms = ms(t);
            disk::mount_image(&image, &disk_dir).await.map_err(storage)?;
            let mount_ms = ms(t);
            let upper = disk_dir.join("upper");
            if new_disk && let Some(ns) = userns {
                // The sandbox's root owns its writable layer's top directory.
                ns.chown_root(&upper).map_err(|e| RuntimeError::Userns(Box::new(e)))?;
            }
            disk::mount_overlay(&spec.lower, &upper, &disk_dir.join("work"), &rootfs, userns).map_err(storage)?;
            if let Some(dir) = &engine {
                make_engine_dir(dir, userns).map_err(|source| RuntimeError::Dir { path: dir.clone(), source })?;
            }
            let overlay_ms = ms(t);
            let user = user::resolve(&rootfs, spec.user.as_deref())
                .map_err(|source| RuntimeError::ResolveUser { id: id.clone(), source })?;
            Ok::<_, RuntimeError>((user, pooled, image_ms, mount_ms, overlay_ms, ms(t)))
        };
        // The network branch runs as a task of its own until the wiring needs it, beside the
        // container's launch too (its `nft` transaction is most of it).
        let net_branch = {
            let (id, netns, bridge, ip) = (id.clone(), netns.clone(), self.cfg.bridge.clone(), record.ip);
            tokio::spawn(async move {
                // Leftovers of an earlier run; `net::wire` makes the new ones once the
                // container's namespace exists. The port is listed for anti-spoofing before
                // it exists.
                net::teardown(&netns, &netns)
                    .await
                    .map_err(|source| RuntimeError::Network { id, source: Box::new(source) })?;
                let cleanup_ms = ms(t);
                crate::firewall::admit_port(&bridge, &netns, ip)
                    .await
                    .map_err(|e| RuntimeError::Firewall(Box::new(e)))?;
                Ok::<_, RuntimeError>((cleanup_ms, ms(t)))
            })
        };
        let mut net = Some(net_branch);
        let files_branch = async {
            restrict_dir(&bundle, self.cfg.userns.start)
                .map_err(|source| RuntimeError::Dir { path: bundle.clone(), source })?;
            for d in [&toolbox, &logs, &etc] {
                std::fs::create_dir_all(d).map_err(|source| RuntimeError::Dir { path: d.clone(), source })?;
            }
            restrict_dir(&etc, self.cfg.userns.start)
                .map_err(|source| RuntimeError::Dir { path: etc.clone(), source })?;
            let hosts = self.hosts_text(record);
            for (name, text) in [
                ("hosts", hosts),
                ("hostname", format!("{hostname}\n")),
                ("resolv.conf", resolv_conf(self.cidr.gateway())),
            ] {
                let p = etc.join(name);
                // Readable by the sandbox (bind-mounted read-only); nothing secret in them.
                write_replace(&p, text.as_bytes(), 0o644).map_err(io_file("write", &p))?;
            }
            let _ = std::fs::remove_file(bundle.join(EXIT_FILE));
            Ok::<_, RuntimeError>(ms(t))
        };
        let result = async {
            // Polled in this order: the disk branch starts its work, then the (synchronous) files
            // are written while that runs.
            let (disk, files) = tokio::join!(disk_branch, files_branch);
            let (user, pooled, image_ms, mount_ms, overlay_ms, disk_ms) = disk?;
            let files_ms = files?;
            // The agent runs as the image's user and creates its socket in the toolbox dir: a small
            // tmpfs of its own (what the sandbox writes there never reaches the host disk), fresh
            // at every start. The console log gets another one, out of the sandbox's sight.
            let host_id = |n: u32| match idmap {
                None => Some(n),
                Some(r) => r.host(n),
            };
            let (Some(uid), Some(gid)) = (host_id(user.uid), host_id(user.gid)) else {
                return Err(RuntimeError::InvalidSpec {
                    id: id.clone(),
                    why: format!(
                        "user {}:{} is outside the sandbox's {} ids",
                        user.uid, user.gid, self.cfg.userns.count
                    ),
                });
            };
            disk::mount_tmpfs(&toolbox, TOOLBOX_TMPFS_KIB, uid, gid, 0o700).map_err(storage)?;
            disk::mount_tmpfs(&logs, CONSOLE_TMPFS_KIB, 0, 0, 0o700).map_err(storage)?;
            let prepare_ms = ms(t);
            let ca_bundle = self.write_ca_bundle(&rootfs, &etc)?;
            let root_id = host_id(0).unwrap_or(self.cfg.userns.start);
            self.install_ca_certificates(id, &rootfs, crate::cabundle::Owner { uid: root_id, gid: root_id })?;

            let params = BundleParams {
                id: id.clone(),
                rootfs: rootfs.clone(),
                hostname: hostname.clone(),
                entrypoint: spec.entrypoint.clone(),
                env: spec.env.clone(),
                workdir: spec.workdir.clone(),
                user,
                cpu: spec.cpu,
                memory_mib: spec.memory_mib,
                pids: spec.pids,
                privileged: spec.privileged,
                cgroups_path: self.cgroups_path(id),
                // Wired from here once runc made the namespace (below): no hook process.
                network_hook: None,
                idmap,
                agent_binary: self.cfg.agent_binary.clone(),
                toolbox_dir: toolbox.clone(),
                etc_hosts: etc.join("hosts"),
                etc_hostname: etc.join("hostname"),
                etc_resolv: etc.join("resolv.conf"),
                ca_bundle,
                host_caps: self.host_caps,
                nofile: oci::host_nofile_limit(),
                seccomp: (!spec.privileged)
                    .then(|| if engine.is_some() { self.seccomp_engine.clone() } else { self.seccomp.clone() }),
                engine: engine.clone(),
            };
            let path = bundle.join("config.json");
            let mut config = oci::config(&params);
            if !gpus.is_empty() {
                let gpu_err = |e| RuntimeError::Gpu { id: id.clone(), source: Box::new(e) };
                let edits = self.gpus.edits(&gpus).map_err(gpu_err)?;
                crate::cdi::apply(&mut config, &edits, crate::cdi::Target { idmap }).map_err(gpu_err)?;
            }
            let json = serde_json::to_vec_pretty(&config).map_err(|e| io_file("write", &path)(e.into()))?;
            // 0600: it holds the sandbox's environment.
            write_replace(&path, &json, 0o600).map_err(io_file("write", &path))?;
            let config_ms = ms(t) - prepare_ms;
            let t_launch = Instant::now();
            let (console, log) = (self.console_path(id), bundle.join("runc.log"));
            // Always `runc create`: the container's namespaces exist and its init waits, before
            // `execve`, on its exec fifo; the network is wired into its namespace from here, then
            // (for `Run`) the fifo releases it, as `runc start` would, without a process.
            let native = match crate::launch::supports(&config, &self.launch_host) {
                // Engine mode hands the sandbox its cgroups between create and start: runc's.
                Ok(()) if engine.is_some() => false,
                Ok(()) => self.cfg.native_launcher,
                Err(why) => {
                    if self.cfg.native_launcher {
                        tracing::debug!(sandbox = %id, why, "started by runc: outside what the launcher covers");
                    }
                    false
                }
            };
            if native {
                let (root, cid, host) = (self.cfg.runc_root.clone(), id.clone(), self.launch_host.clone());
                let bpf = config["linux"].get("seccomp").is_some().then(|| self.seccomp_bpf.clone());
                let console = console.clone();
                tokio::task::spawn_blocking(move || {
                    crate::launch::create(&root, &cid, &config, &host, bpf.as_deref(), &console)
                })
                .await
                .map_err(|e| {
                    RuntimeError::Launch(Box::new(crate::launch::LaunchError::Host {
                        id: id.clone(),
                        step: "run the launch thread".into(),
                        source: std::io::Error::other(e.to_string()),
                    }))
                })?
                .map_err(|e| RuntimeError::Launch(Box::new(e)))?;
            } else {
                self.runc.create(id, &bundle, &console, &log).await?;
                if engine.is_some()
                    && let Err(source) = cgroup::delegate(&self.cgroups_path(id), root_id, root_id)
                {
                    self.runc.delete_force(id).await;
                    return Err(RuntimeError::Dir { path: cgroup::dir("memory", &self.cgroups_path(id)), source });
                }
            }
            let container_ms = ms(t_launch);
            let net_result = match net.take() {
                Some(task) => task.await.unwrap_or_else(|e| {
                    Err(RuntimeError::TaskLost { id: id.clone(), step: "preparing the network", why: e.to_string() })
                }),
                None => unreachable!("the network branch is awaited once"),
            };
            let (cleanup_ms, net_ms) = match net_result {
                Ok(t) => t,
                Err(e) => {
                    self.runc.delete_force(id).await;
                    return Err(e);
                }
            };
            let t_wire = Instant::now();
            if let Err(e) = self.wire_and_release(record, &netns, launch).await {
                self.runc.delete_force(id).await;
                return Err(e);
            }
            let wire_ms = ms(t_wire);
            tracing::debug!(
                ?launch,
                new_disk,
                pooled,
                queued_ms,
                image_ms,
                mount_ms,
                overlay_ms,
                disk_ms,
                cleanup_ms,
                net_ms,
                files_ms,
                prepare_ms,
                config_ms,
                container_ms,
                launcher = if native { "native" } else { "runc" },
                wire_ms,
                "start phases (disk, net and files concurrent; their times are since the start)"
            );
            Ok(())
        }
        .await;
        // Awaited on every path, so that a teardown after a failure finds all it made.
        if let Some(task) = net {
            let _ = task.await;
        }
        result
    }

    /// Wires the network of a created container (see `net::wire`) and, for `Launch::Run`,
    /// lets its process start.
    async fn wire_and_release(&self, record: &Record, netns: &str, launch: Launch) -> Result<(), RuntimeError> {
        let id = &record.spec.id;
        let net_err = |source| RuntimeError::Network { id: id.clone(), source: Box::new(source) };
        let pid = match self.runc.state(id).await? {
            Some(s) if s.status == "created" && s.pid != 0 => s.pid,
            other => {
                return Err(RuncError::Run {
                    id: id.clone(),
                    status: other.map_or_else(|| "gone".to_string(), |s| s.status),
                    log: "the container was not waiting to start after runc create".into(),
                }
                .into());
            }
        };
        let wiring = net::Wiring {
            netns: netns.to_string(),
            veth: netns.to_string(),
            bridge: self.cfg.bridge.clone(),
            ip: record.ip,
            cidr: self.cidr,
            peers: self.peer_ips(record),
        };
        net::wire(wiring, pid).await.map_err(net_err)?;
        if launch == Launch::Run && !self.runc.start(id).await? {
            return Err(RuncError::Run {
                id: id.clone(),
                status: "not started".into(),
                log: "the container was no longer waiting to start once its network was wired".into(),
            }
            .into());
        }
        Ok(())
    }

    /// Unmounts the overlay and the disk and deletes the network namespace; best effort,
    /// failures are logged.
    async fn teardown(&self, id: &str) {
        let bundle = self.bundle(id);
        for m in [bundle.join("rootfs"), bundle.join("disk"), bundle.join("toolbox"), bundle.join("log")] {
            if let Err(e) = disk::unmount(&m) {
                tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "unmount");
            }
        }
        let netns = self.netns_name(id);
        if let Err(e) = net::teardown(&netns, &netns).await {
            tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "network teardown");
        }
        if let Some(ip) = self.ip(id)
            && let Err(e) = crate::firewall::forget_port(&self.cfg.bridge, &netns, ip).await
        {
            tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "anti-spoofing entry");
        }
        self.free_gpus(id);
    }

    /// Writes `exit.json` from what the (stopped, not yet deleted) container's cgroup shows.
    fn record_exit(&self, id: &str) {
        let exit = LastExit { exit_code: None, oom_killed: cgroup::oom_killed(&self.cgroups_path(id)) };
        let path = self.bundle(id).join(EXIT_FILE);
        if path.parent().is_some_and(Path::exists)
            && let Ok(json) = serde_json::to_vec(&exit)
            && let Err(e) = write_atomic(&path, &json)
        {
            tracing::warn!(sandbox = %id, error = %e, "write exit record");
        }
    }

    async fn wait_stopped(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.runc.state(id).await? {
                None => return Ok(true),
                Some(s) if s.status == "stopped" => return Ok(true),
                Some(_) if Instant::now() >= deadline => return Ok(false),
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// How long a stop waits for the kernel to let go of the sandbox's disk.
    const RELEASE_WAIT: Duration = Duration::from_secs(5);

    /// SIGTERM, SIGKILL after `grace` (at once when zero), wait, record OOM, `runc delete`,
    /// then unmount and delete the netns. `disk.img` and the record stay.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        if !self.bundle(id).exists() && self.runc.state(id).await?.is_none() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        self.stop_locked(id, grace).await?;
        // Stopped means the disk is at rest (see `disk::wait_released`); still held after the
        // bound, the stop stands and the next start waits for it again.
        let image = self.bundle(id).join("disk.img");
        if let Err(e) = disk::wait_released(&image, Self::RELEASE_WAIT).await {
            tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "the disk is still held after the stop");
        }
        Ok(())
    }

    async fn stop_locked(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        if let Some(state) = self.runc.state(id).await? {
            if state.status == "paused" {
                self.runc.resume(id).await;
            }
            if state.status != "stopped" {
                let mut stopped = false;
                // A created container runs nothing of the sandbox's yet: nothing to let finish
                // (and the launcher's agent, waiting on its fifo, has no TERM handler yet).
                if !grace.is_zero() && state.status != "created" {
                    self.runc.kill(id, "TERM").await?;
                    stopped = self.wait_stopped(id, grace).await?;
                }
                if !stopped {
                    self.runc.kill(id, "KILL").await?;
                    if !self.wait_stopped(id, KILL_WAIT).await? {
                        return Err(RuncError::KillTimeout { id: id.into() }.into());
                    }
                }
            }
            self.record_exit(id);
            self.runc.delete(id).await?;
        }
        self.teardown(id).await;
        tracing::info!(sandbox = %id, ms = t0.elapsed().as_millis() as u64, "sandbox stopped");
        Ok(())
    }

    /// Stops the sandbox if needed and removes everything it had. Missing is fine.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Ok(());
        }
        let guard = self.lock(id).await;
        self.remove_locked(id).await?;
        drop(guard);
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        tracing::info!("sandbox destroyed");
        Ok(())
    }

    async fn remove_locked(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_locked(id, Duration::ZERO).await?;
        self.forget_network(id).await?;
        let bundle = self.bundle(id);
        // Anything still mounted below the bundle (a crash between mounts) goes first, deepest
        // first, so that remove_dir_all never descends into a mounted image.
        let mut mounts = disk::mounts_under(&bundle);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            disk::unmount(&m).map_err(|source| RuntimeError::Storage { id: id.into(), source: Box::new(source) })?;
        }
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RuntimeError::RemoveBundle { path: bundle, source }),
        }
        self.ips_lock().remove(id);
        Ok(())
    }

    /// What the sandbox is doing, from `runc state`, its memory cgroup and `exit.json`.
    pub async fn status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        if !valid_id(id) {
            return Ok(SandboxStatus::Missing);
        }
        match self.runc.state(id).await? {
            Some(s) if s.status == "stopped" => {
                Ok(SandboxStatus::Stopped { exit_code: None, oom_killed: cgroup::oom_killed(&self.cgroups_path(id)) })
            }
            Some(s) => Ok(SandboxStatus::Running { pid: s.pid }),
            None if self.bundle(id).is_dir() => {
                let exit: LastExit = std::fs::read(self.bundle(id).join(EXIT_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                Ok(SandboxStatus::Stopped { exit_code: exit.exit_code, oom_killed: exit.oom_killed })
            }
            None => Ok(SandboxStatus::Missing),
        }
    }

    /// Waits (at most `timeout`) until no runc command of another process runs against this
    /// runc root: after a crash, a `runc create` the dead server started can still be
    /// finishing, and would leave a container behind a cleanup that ran before it ended.
    pub async fn wait_for_foreign_runc(&self, timeout: Duration) {
        let root = self.cfg.runc_root.as_os_str().as_encoded_bytes().to_vec();
        let deadline = Instant::now() + timeout;
        loop {
            let me = std::process::id();
            let busy = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { return false };
                if pid == me {
                    return false;
                }
                let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { return false };
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"runc"))
                    && args.windows(2).any(|w| w[0] == b"--root" && w[1] == root.as_slice())
            });
            if !busy {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(runc_root = %self.cfg.runc_root.display(), "runc commands of another process still run");
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ids runc has state for (a container may exist without its bundle after a crash).
    pub fn runc_ids(&self) -> Vec<String> {
        self.runc.container_ids().into_iter().filter(|id| valid_id(id)).collect()
    }

    /// Ids that have a bundle directory (to reconcile after a restart).
    pub async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let root = &self.cfg.root;
        let entries = std::fs::read_dir(root).map_err(|source| RuntimeError::Dir { path: root.clone(), source })?;
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_id(n))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// What one-shot build steps (`crate::step`) share with sandboxes.
impl Runtime {
    pub(crate) fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The bridge's address: the sandboxes' gateway, where the server's DNS forwarder listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.gateway()
    }

    pub(crate) fn cidr(&self) -> &Cidr {
        &self.cidr
    }

    /// The converted seccomp profile unprivileged sandboxes get.
    pub(crate) fn seccomp_spec(&self) -> &Value {
        &self.seccomp
    }

    /// Moves a pre-formatted disk image of `size_mib` to `image` if one is ready.
    pub(crate) fn take_pooled_disk(&self, size_mib: u64, image: &Path) -> bool {
        let taken = self.pool.take(size_mib, image);
        self.pool.refill();
        taken
    }

    /// The sandboxes' user namespace (steps run in it too).
    pub(crate) fn userns(&self) -> &Userns {
        &self.userns
    }

    pub(crate) fn host_caps(&self) -> u64 {
        self.host_caps
    }

    /// Takes an address of the bridge network for `key` (never a sandbox id).
    pub(crate) fn allocate_ip(&self, key: &str) -> Result<Ipv4Addr, RuntimeError> {
        self.allocate(key)
    }

    pub(crate) fn release_ip(&self, key: &str) {
        self.ips_lock().remove(key);
    }

    /// With `--sandbox-ca-bundle`: writes the image's bundle (read inside `rootfs`) plus the
    /// extra certificates to `<etc>/ca-certificates.crt` (0644: certificates are public) and
    /// returns its path for the read-only bind; `None` without the option.
    pub(crate) fn write_ca_bundle(&self, rootfs: &Path, etc: &Path) -> Result<Option<PathBuf>, RuntimeError> {
        let Some(extra) = &self.cfg.ca_bundle else { return Ok(None) };
        let text = crate::cabundle::load_extra(extra)
            .map_err(|e| RuntimeError::InvalidConfig { field: "ca_bundle", why: cove_types::error::chain(&e) })?;
        let path = etc.join("ca-certificates.crt");
        write_replace(&path, &crate::cabundle::merged(rootfs, &text), 0o644).map_err(io_file("write", &path))?;
        Ok(Some(path))
    }

    /// The host's resolv.conf as sandboxes get it.
    pub(crate) fn resolv_conf(&self) -> String {
        resolv_conf(self.cidr.gateway())
    }

    /// Private networks sandboxes may reach after all (`--sandbox-allow-private`).
    pub fn allow_private(&self) -> &[Ipv4Net] {
        &self.cfg.allow_private
    }
}

/// GPUs ([`crate::gpu`]): what the server asks, the hold a start takes and a stop frees.
impl Runtime {
    /// GPUs of this machine (CDI devices of kind `nvidia.com/gpu`).
    pub fn gpu_total(&self) -> usize {
        self.gpus.total()
    }

    /// GPUs no sandbox holds now.
    pub fn gpus_free(&self) -> usize {
        self.gpus.free()
    }

    /// Takes `n` GPUs for sandbox `id` before its create or start (which keep them), so that a
    /// request finding none free is refused before anything is made. Undo with
    /// [`Runtime::release_gpus`] when the create or start does not happen.
    pub fn reserve_gpus(&self, id: &str, n: u32) -> Result<(), RuntimeError> {
        self.gpus
            .acquire(id, n as usize)
            .map(drop)
            .map_err(|source| RuntimeError::NoFreeGpu { id: id.to_string(), source })
    }

    /// Frees what [`Runtime::reserve_gpus`] took for a sandbox that was not created or started.
    pub fn release_gpus(&self, id: &str) {
        self.gpus.release(id);
    }

    /// The GPUs a start gives the sandbox (held from now on, recorded so that a restarted
    /// server knows them); none for a sandbox without GPUs.
    fn take_gpus(&self, record: &Record) -> Result<Vec<String>, RuntimeError> {
        let id = &record.spec.id;
        if record.spec.gpu == 0 {
            return Ok(Vec::new());
        }
        let names = self
            .gpus
            .acquire(id, record.spec.gpu as usize)
            .map_err(|source| RuntimeError::NoFreeGpu { id: id.clone(), source })?;
        if names != record.gpus {
            let mut r = record.clone();
            r.gpus = names.clone();
            if let Err(e) = self.write_record(&r) {
                self.gpus.release(id);
                return Err(e);
            }
        }
        tracing::info!(sandbox = %id, gpus = ?names, "GPUs taken");
        Ok(names)
    }

    /// At every stop: the sandbox's GPUs are free again, in memory and in its record.
    fn free_gpus(&self, id: &str) {
        let held = self.gpus.release(id);
        if let Ok(mut r) = self.read_record(id)
            && !r.gpus.is_empty()
        {
            r.gpus.clear();
            if let Err(e) = self.write_record(&r) {
                tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "clear the recorded GPUs");
            }
        }
        if held {
            tracing::info!(sandbox = %id, "GPUs freed");
        }
    }
}

/// How long removing a sandbox waits for a linked peer's lock before it leaves the peer's
/// record as it is (two linked sandboxes destroyed at once each wait for the other).
const PEER_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Sandbox networking: policies, links and the firewall ([`crate::firewall`]).
impl Runtime {
    fn policies_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NetPolicy>> {
        self.policies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn firewall_config(&self) -> FirewallConfig {
        FirewallConfig {
            bridge: self.cfg.bridge.clone(),
            cidr: self.cidr,
            egress: self.cfg.egress,
            allow_private: self.cfg.allow_private.clone(),
            state_dir: self.cfg.root.clone(),
        }
    }

    fn policy_err(op: &'static str, id: &str) -> impl FnOnce(crate::firewall::FirewallError) -> RuntimeError {
        let id = id.to_string();
        move |e| RuntimeError::NetworkPolicy { op, id, source: Box::new(e) }
    }

    /// Installs the table with every record's policy and links in one transaction.
    async fn install_firewall(&self, records: &[Record]) -> Result<(), RuntimeError> {
        let policies: Vec<(Ipv4Addr, NetPolicy)> =
            records.iter().filter(|r| r.policy.is_restricted()).map(|r| (r.ip, r.policy.clone())).collect();
        let mut links: Vec<(Ipv4Addr, Ipv4Addr)> = records
            .iter()
            .flat_map(|r| self.peer_ips(r).into_iter().map(move |p| (r.ip.min(p), r.ip.max(p))))
            .collect();
        links.sort();
        links.dedup();
        crate::firewall::install(&self.firewall_config(), &policies, &links)
            .await
            .map_err(|e| RuntimeError::Firewall(Box::new(e)))
    }

    /// At a clean stop of the server: removes the firewall table (and restores the sysctls)
    /// when no sandbox runs any more, else locks the bridge down until the next start (see
    /// [`crate::firewall::shutdown`]). Failures are logged.
    pub async fn shutdown(&self) {
        let mut remain = false;
        for id in self.runc_ids() {
            match self.runc.state(&id).await {
                Ok(Some(s)) if s.status != "stopped" => remain = true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "runc state at shutdown");
                    remain = true;
                }
            }
        }
        if let Err(e) = crate::firewall::shutdown(&self.firewall_config(), remain).await {
            tracing::error!(error = %cove_types::error::chain(&e), "sandbox firewall at shutdown");
        }
    }

    /// Addresses of the linked sandboxes that still have one.
    fn peer_ips(&self, record: &Record) -> Vec<Ipv4Addr> {
        let ips = self.ips_lock();
        record.links.iter().filter_map(|p| ips.get(p).copied()).collect()
    }

    /// The sandbox's `/etc/hosts`: localhost, itself, and each linked sandbox by its short
    /// hostname.
    fn hosts_text(&self, record: &Record) -> String {
        let names = |r: &Record| {
            std::iter::once(short_id(&r.spec.id, 12)).chain(r.host_names.iter().cloned()).collect::<Vec<_>>().join(" ")
        };
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            record.ip,
            names(record)
        );
        for peer in &record.links {
            // The peer's record for its names; its short id when it cannot be read.
            match self.read_record(peer) {
                Ok(p) => hosts.push_str(&format!("{}\t{}\n", p.ip, names(&p))),
                Err(_) => {
                    if let Some(ip) = self.ips_lock().get(peer) {
                        hosts.push_str(&format!("{ip}\t{}\n", short_id(peer, 12)));
                    }
                }
            }
        }
        hosts
    }

    /// Sets the names a sandbox answers to in `/etc/hosts` (its own and its linked peers'),
    /// rewritten in place when it runs. Names that are not host names (letters, digits, `-`,
    /// `_`, `.`, at most 63 bytes) are left out.
    pub async fn set_host_names(&self, id: &str, names: &[String]) -> Result<(), RuntimeError> {
        let host_names: Vec<String> = names
            .iter()
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 63
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
            .cloned()
            .collect();
        let peers = {
            let _g = self.lock(id).await;
            let mut r = self.read_record(id)?;
            if r.host_names == host_names {
                return Ok(());
            }
            r.host_names = host_names;
            self.write_record(&r)?;
            self.rewrite_hosts(&r)?;
            r.links.clone()
        };
        for peer in peers {
            let _g = self.lock(&peer).await;
            if let Ok(p) = self.read_record(&peer) {
                self.rewrite_hosts(&p)?;
            }
        }
        Ok(())
    }

    fn write_record(&self, record: &Record) -> Result<(), RuntimeError> {
        let path = self.bundle(&record.spec.id).join(SPEC_FILE);
        let json = serde_json::to_vec_pretty(record).map_err(|e| io_file("write", &path)(e.into()))?;
        write_atomic(&path, &json).map_err(io_file("write", &path))
    }

    /// Rewrites `<bundle>/etc/hosts` in place (the sandbox's read-only bind keeps the inode);
    /// a sandbox never started has none yet, which is fine.
    fn rewrite_hosts(&self, record: &Record) -> Result<(), RuntimeError> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.bundle(&record.spec.id).join("etc/hosts");
        let text = self.hosts_text(record);
        let mut f = match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_file("write", &path)(e)),
        };
        (|| {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(text.as_bytes())
        })()
        .map_err(io_file("write", &path))
    }

    /// Replaces the sandbox's outbound policy: recorded, then applied at once in the firewall
    /// (no restart; it stays in force across stops and starts, on the sandbox's address).
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn set_network_policy(&self, id: &str, policy: NetPolicy) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        let mut record = self.read_record(id)?;
        record.policy = policy;
        self.write_record(&record)?;
        let cleared = if record.policy.is_restricted() {
            self.policies_lock().insert(id.to_string(), record.policy.clone());
            false
        } else {
            self.policies_lock().remove(id);
            true
        };
        crate::firewall::set_policy(&self.cfg.bridge, record.ip, &record.policy)
            .await
            .map_err(Self::policy_err("apply the network policy of", id))?;
        tracing::info!(
            block_all = record.policy.block_all,
            cidrs = record.policy.allow_cidrs.len(),
            domains = record.policy.allow_domains.len(),
            cleared,
            "network policy applied"
        );
        Ok(())
    }

    /// The sandbox's recorded policy; `None` when there is no such sandbox.
    pub fn network_policy(&self, id: &str) -> Option<NetPolicy> {
        self.ip(id)?;
        Some(self.policies_lock().get(id).cloned().unwrap_or_default())
    }

    /// Who holds `ip` and with which policy, from memory (asked for every DNS query): `None`
    /// for an address nothing holds. (A build step's address has the default policy.)
    pub fn policy_for_ip(&self, ip: Ipv4Addr) -> Option<(String, NetPolicy)> {
        let id = self.ips_lock().iter().find(|(_, a)| **a == ip).map(|(id, _)| id.clone())?;
        let policy = self.policies_lock().get(&id).cloned().unwrap_or_default();
        Some((id, policy))
    }

    /// Lets the sandbox at `ip` reach `addrs` (what its DNS query for an allowed domain
    /// resolved to) for `ttl_secs` (at least 30 s, at most a day). A no-op unless its policy
    /// has a domain allow-list.
    pub async fn allow_resolved(&self, ip: Ipv4Addr, addrs: &[Ipv4Addr], ttl_secs: u32) -> Result<(), RuntimeError> {
        let Some((id, policy)) = self.policy_for_ip(ip) else { return Ok(()) };
        if policy.block_all || policy.allow_domains.is_empty() || addrs.is_empty() {
            return Ok(());
        }
        crate::firewall::allow_resolved(&self.cfg.bridge, ip, addrs, ttl_secs)
            .await
            .map_err(Self::policy_err("allow resolved addresses for", &id))?;
        tracing::debug!(sandbox = %id, ?addrs, ttl_secs, "resolved addresses allowed");
        Ok(())
    }

    /// Links two sandboxes: both records remember it, the firewall lets them reach each other,
    /// each running one gets a route to the other via the gateway and a line for it in its
    /// `/etc/hosts` (short hostname); starts redo routes and hosts. Idempotent.
    #[tracing::instrument(skip_all, fields(a = %a, b = %b))]
    pub async fn link(&self, a: &str, b: &str) -> Result<(), RuntimeError> {
        if a == b {
            return Err(RuntimeError::InvalidLink {
                a: a.into(),
                b: b.into(),
                why: "a sandbox is linked to itself".into(),
            });
        }
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let _g1 = self.lock(first).await;
        let _g2 = self.lock(second).await;
        let (mut ra, mut rb) = (self.read_record(a)?, self.read_record(b)?);
        for (r, peer) in [(&mut ra, b), (&mut rb, a)] {
            if !r.links.iter().any(|l| l == peer) {
                r.links.push(peer.to_string());
                self.write_record(r)?;
            }
        }
        crate::firewall::link(&self.cfg.bridge, ra.ip, rb.ip).await.map_err(Self::policy_err("link", a))?;
        for (r, peer_ip) in [(&ra, rb.ip), (&rb, ra.ip)] {
            let netns = self.netns_name(&r.spec.id);
            if net::netns_path(&netns).exists() {
                net::add_peer_route(&netns, peer_ip, self.cidr.gateway())
                    .await
                    .map_err(|source| RuntimeError::Network { id: r.spec.id.clone(), source: Box::new(source) })?;
            }
            self.rewrite_hosts(r)?;
        }
        tracing::info!(ip_a = %ra.ip, ip_b = %rb.ip, "sandboxes linked");
        Ok(())
    }

    /// Undoes [`Runtime::link`]; unlinked pairs are fine.
    #[tracing::instrument(skip_all, fields(a = %a, b = %b))]
    pub async fn unlink(&self, a: &str, b: &str) -> Result<(), RuntimeError> {
        if a == b {
            return Ok(());
        }
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let _g1 = self.lock(first).await;
        let _g2 = self.lock(second).await;
        let (ra, rb) = (self.read_record(a)?, self.read_record(b)?);
        let (ip_a, ip_b) = (ra.ip, rb.ip);
        crate::firewall::unlink(&self.cfg.bridge, ip_a, ip_b).await.map_err(Self::policy_err("unlink", a))?;
        self.unlink_from(ra, b, ip_b).await?;
        self.unlink_from(rb, a, ip_a).await
    }

    /// Removes `gone` (at `gone_ip`) from `record`'s links, hosts and routes (its lock held).
    async fn unlink_from(&self, mut record: Record, gone: &str, gone_ip: Ipv4Addr) -> Result<(), RuntimeError> {
        let before = record.links.len();
        record.links.retain(|l| l != gone);
        if record.links.len() != before {
            self.write_record(&record)?;
        }
        let id = record.spec.id.clone();
        net::delete_peer_route(&self.netns_name(&id), gone_ip)
            .await
            .map_err(|source| RuntimeError::Network { id: id.clone(), source: Box::new(source) })?;
        self.rewrite_hosts(&record)
    }

    /// At destroy (the sandbox's lock held): its policy chain, its links (firewall elements,
    /// the peers' records, routes and hosts lines); firewall failures are logged only. A peer busy for longer than
    /// [`PEER_LOCK_WAIT`] keeps a stale link id, which names no address and is ignored.
    async fn forget_network(&self, id: &str) -> Result<(), RuntimeError> {
        let record = match self.read_record(id) {
            Ok(r) => r,
            Err(RuntimeError::NotFound { .. }) => {
                self.policies_lock().remove(id);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.policies_lock().remove(id);
        // The firewall's part never stops a destroy (the table may be locked down); the next
        // start rebuilds the table from the records anyway.
        let warn = |e: crate::firewall::FirewallError| {
            tracing::warn!(sandbox = %id, error = %cove_types::error::chain(&e), "firewall cleanup at destroy");
        };
        if record.policy.is_restricted() {
            crate::firewall::clear_policy(&self.cfg.bridge, record.ip).await.unwrap_or_else(warn);
        }
        for peer in &record.links {
            if let Some(peer_ip) = self.ip(peer) {
                crate::firewall::unlink(&self.cfg.bridge, record.ip, peer_ip).await.unwrap_or_else(warn);
            }
            let Ok(_guard) = tokio::time::timeout(PEER_LOCK_WAIT, self.lock(peer)).await else {
                tracing::warn!(sandbox = %id, peer = %peer, "linked sandbox busy: its record keeps the link");
                continue;
            };
            match self.read_record(peer) {
                Ok(r) => self.unlink_from(r, id, record.ip).await?,
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_are_valid_and_path_tricks_are_not() {
        assert!(valid_id(&uuid::Uuid::new_v4().to_string()));
        for bad in ["", "..", "../../etc", "a/b", "short", "with space 12345678"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn short_ids_keep_only_alphanumerics() {
        assert_eq!(short_id("0B1C2D3E-aaaa-bbbb", 8), "0b1c2d3e");
        assert_eq!(short_id("0b1c-2d3e-aaaa", 12), "0b1c2d3eaaaa");
    }

    #[test]
    fn sandboxes_resolve_through_the_gateway_with_the_hosts_search_and_options() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nsearch example.org\noptions edns0 trust-ad\n";
        assert_eq!(
            sandbox_resolv_conf(host, Ipv4Addr::new(10, 213, 0, 1)),
            "nameserver 10.213.0.1\nsearch example.org\noptions edns0 trust-ad\n"
        );
        assert_eq!(sandbox_resolv_conf("", Ipv4Addr::new(10, 0, 0, 1)), "nameserver 10.0.0.1\n");
    }
}
