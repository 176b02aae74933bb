//! One-shot build steps: a Dockerfile `RUN` as a foreground `runc run` on a throw-away overlay.
//!
//! ```text
//! <root>/.steps/<id>/      (not a valid sandbox id, so `Runtime::list` never reports it)
//!   disk.img, disk/        the step's own ext4 disk of `disk_mib` (loop, nosuid,nodev): upper/ work/
//!   rootfs/                overlay: lowerdir = the step's lowers (idmapped), upperdir = disk/upper
//!   etc/                   generated hosts, hostname, resolv.conf (bind-mounted)
//!   ca-layer/              with `--sandbox-ca-bundle`: the image's trust store plus the extra
//!                          certificates, a lower layer on top of the step's (see `cabundle`)
//!   config.json  runc.log
//! ```
//!
//! The step gets a sandbox's isolation: Docker's default capabilities, the runtime's seccomp
//! profile, masked and read-only `/proc` paths, its own pid, mount, uts, ipc and network
//! namespaces, and CPU, memory (no extra swap) and pids limits in the cgroup
//! `<cgroup_parent>/step.<id>`; it runs as runc container `step.<id>` (a `.` no sandbox id has).
//! Network: without it, the step's new network namespace has only loopback (runc brings `lo`
//! up). With it, the step gets a named netns `<prefix>-<hash>` with an address on the sandbox
//! bridge, an isolated bridge port and a default route via the bridge, exactly like a sandbox:
//! never the host's namespace. It then reaches what sandboxes reach (the host; the outside
//! world only where the host forwards and masquerades the bridge network).
//!
//! Everything on the host (the runc container, its cgroup, the netns and its address, the
//! overlay mount, `<root>/.steps/<id>`) is removed when the step ends, fails, or its future is
//! dropped (a guard cleans up synchronously on drop); `Runtime::new` removes leftovers of a
//! crash. Mount points that runc had to create in the rootfs (`/etc/hosts` in an image without
//! one, `/proc` in a scratch image) are removed from it again before the overlay is
//! unmounted, so that they do not show up in the layer, as with Docker.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::disk::{self, DiskError};
use crate::net::{self, NetError};
use crate::oci::{self, BundleParams};
use crate::runc::{Runc, RuncError};
use crate::runtime::{Runtime, RuntimeError};
use crate::user;

/// Under the runtime root; a name no sandbox id can have.
const STEPS_DIR: &str = ".steps";
/// Prefix of a step's runc container id and cgroup name.
const CONTAINER_PREFIX: &str = "step.";
/// The UTS hostname of every step (constant, so that steps that record it stay reproducible).
pub const STEP_HOSTNAME: &str = "cove-build";
/// How long output may keep arriving after runc exited (only processes that escaped the
/// step's pid namespace could hold the pipe longer, and there are none).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for runc to exit after SIGKILL to the container, then to runc itself.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);
/// Exit code for a command that does not exist (as shells and Docker report it).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code for a command that exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
const OUTPUT_CHUNK: usize = 64 << 10;

/// One build step: a command run once in a fresh container over overlay lower dirs, with its
/// file system changes captured in `upper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// Unique among running steps; 1–64 of `[A-Za-z0-9_-]`. Names the runc container
    /// (`step.<id>`), the cgroup and the step directory.
    pub id: String,
    /// Overlay lower dirs, topmost first, each in overlay format (whiteouts are 0:0 character
    /// devices, opaque directories carry `trusted.overlay.opaque`). The last is a base root
    /// filesystem or an empty directory (`FROM scratch`).
    pub lowers: Vec<PathBuf>,
    /// Empty directory that receives the step's changes (in image ids) once it succeeded. The
    /// step itself writes to its own disk; its upper dir is copied here when it exits 0.
    pub upper: PathBuf,
    /// Size of the step's disk in MiB: all it can write (a `RUN dd` past it gets ENOSPC).
    pub disk_mib: u64,
    /// The command, e.g. `["/bin/sh", "-c", "apt-get update"]`; looked up in the step's `PATH`.
    pub argv: Vec<String>,
    /// `K=V`; `PATH` and `HOME` (the user's) are added when missing.
    pub env: Vec<String>,
    /// Absolute working directory, created (owned by root, mode 0755) when missing.
    pub workdir: String,
    /// `USER`: name, uid, `uid:gid` or `name:group`, resolved in the merged root filesystem;
    /// `None` is root.
    pub user: Option<String>,
    /// `false`: a network namespace with loopback only. `true`: an address on the sandbox
    /// bridge (see the module docs).
    pub network: bool,
    /// vCPUs (CFS quota).
    pub cpu: u32,
    /// Memory limit in MiB (swap limited to the same).
    pub memory_mib: u64,
    /// Process limit.
    pub pids: u32,
}

/// What a step made on the host; everything here is removed by [`cleanup`].
#[derive(Debug)]
struct StepResources {
    /// `step.<id>`: runc container id and cgroup name.
    container: String,
    /// `<root>/.steps/<id>`.
    dir: PathBuf,
    /// `<cgroup_parent>/step.<id>`.
    cgroups_path: String,
    /// The named netns (also the host veth's name) when the step has network.
    netns: Option<String>,
    /// The IP map key when an address was taken.
    ip_key: Option<String>,
    /// `runc run` while it may still be running.
    runc_child: Option<tokio::process::Child>,
}

/// Cleans up on drop unless the normal path already did (see [`cleanup`]).
struct StepGuard<'a> {
    rt: &'a Runtime,
    res: StepResources,
    armed: bool,
}

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The future was dropped (cancelled) or panicked: clean up now, synchronously, so that
        // nothing is left even if the caller's runtime is shutting down. The async cleanup
        // runs on a private single-thread runtime in a scoped thread (blocking this one for
        // the few runc/ip commands it takes).
        let (rt, res) = (self.rt, &mut self.res);
        let container = res.container.clone();
        std::thread::scope(|s| {
            let worker = s.spawn(|| match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r.block_on(cleanup(rt, res)),
                Err(e) => {
                    let path = res.dir.clone();
                    Err(RuntimeError::Dir { path, source: e })
                }
            });
            match worker.join() {
                Ok(Ok(())) => tracing::debug!(step = %container, "cancelled step cleaned up"),
                Ok(Err(e)) => {
                    tracing::error!(step = %container, error = %cove_types::error::chain(&e), "cancelled step cleanup")
                }
                Err(_) => tracing::error!(step = %container, "cancelled step cleanup panicked"),
            }
        });
    }
}

fn valid_step_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// FNV-1a: a stable short name for a step's netns from its id.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `<prefix>-<hex>`, 15 bytes at most: the `-` keeps it apart from sandbox names, which are
/// the prefix followed by alphanumerics only.
fn step_netns_name(prefix: &str, id: &str) -> String {
    let n = 15 - prefix.len() - 1;
    let hex = format!("{:016x}", fnv1a(id));
    format!("{prefix}-{}", &hex[..n])
}

/// Lexically cleans an absolute path into its components (`.` dropped, `..` pops).
fn clean_components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn env_default(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    if !env.iter().any(|e| e.starts_with(&prefix)) {
        env.push(format!("{prefix}{value}"));
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, data)
}

fn io_file(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::BundleFile { op, path, source }
}

/// Opens `rel` inside `root` as an `O_PATH` descriptor; symlinks are resolved as if `root`
/// were `/`, so nothing outside it is reached. `DIRECTORY` in `extra` follows a final symlink
/// (a parent directory); otherwise the final component itself is opened (an existence check).
fn open_in_root(root: &rustix::fd::OwnedFd, rel: &str, extra: OFlags) -> rustix::io::Result<rustix::fd::OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let nofollow = if extra.contains(OFlags::DIRECTORY) { OFlags::empty() } else { OFlags::NOFOLLOW };
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC | nofollow | extra,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
}

fn open_root(root: &Path) -> std::io::Result<rustix::fd::OwnedFd> {
    rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(Into::into)
}

/// `mkdir -p` of `components` inside `root`, each new directory root-owned with mode 0755.
/// Creates the missing directories of `components` under `root`, mode 0755, owned by
/// `owner` (the step's root as the host sees it, so that root inside owns them).
fn mkdir_in_root(root: &Path, components: &[&str], owner: u32) -> std::io::Result<()> {
    let root_fd = open_root(root)?;
    for i in 1..=components.len() {
        let rel = components[..i].join("/");
        if open_in_root(&root_fd, &rel, OFlags::empty()).is_ok() {
            continue;
        }
        let parent = open_in_root(&root_fd, &components[..i - 1].join("/"), OFlags::DIRECTORY)?;
        match rustix::fs::mkdirat(&parent, components[i - 1], Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                let id = (rustix::fs::Uid::from_raw(owner), rustix::fs::Gid::from_raw(owner));
                rustix::fs::chownat(&parent, components[i - 1], Some(id.0), Some(id.1), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Paths (relative, parents first) of the mount destinations that lie directly on the root
/// filesystem (not inside another mount such as `/dev`) and of their parents.
fn rootfs_mount_points(config: &Value) -> Vec<String> {
    let dests: Vec<Vec<&str>> = config["mounts"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["destination"].as_str()).map(clean_components).collect())
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for d in &dests {
        if d.is_empty() || dests.iter().any(|o| o.len() < d.len() && !o.is_empty() && d.starts_with(o)) {
            continue;
        }
        for i in 1..=d.len() {
            let rel = d[..i].join("/");
            if !out.contains(&rel) {
                out.push(rel);
            }
        }
    }
    out
}

/// Those of `paths` that do not exist in `root` (runc will create them as mount points).
fn missing_in_root(root: &Path, paths: &[String]) -> Vec<String> {
    let Ok(root_fd) = open_root(root) else { return Vec::new() };
    paths.iter().filter(|p| open_in_root(&root_fd, p, OFlags::empty()).is_err()).cloned().collect()
}

/// Removes what runc created as mount points (deepest first): files, and directories that are
/// still empty. What the step itself put there stays.
fn remove_created(root: &Path, created: &[String]) {
    let Ok(root_fd) = open_root(root) else { return };
    let mut created = created.to_vec();
    created.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for rel in created {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let Ok(dir) = open_in_root(&root_fd, parent, OFlags::DIRECTORY) else { continue };
        let r = match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) => rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR),
            r => r,
        };
        match r {
            Ok(()) => tracing::debug!(path = %rel, "removed mount point runc created"),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST) => {}
            Err(e) => tracing::warn!(path = %rel, error = %e, "remove mount point runc created"),
        }
    }
}

/// Errors runc logged since `from` (its log is text format, one `level=error` line each).
fn runc_errors(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("level=error"))
        .map(|l| l.split_once("msg=").map_or(l, |(_, m)| m).trim_matches('"').replace("\\\"", "\""))
        .collect()
}

/// The exit code a shell would give when runc could not execute the command, if that is what
/// `error` says.
fn exec_failure_code(error: &str) -> Option<i32> {
    let exec = error.split_once("unable to start container process: exec: ")?.1;
    if exec.contains("not found") || exec.contains("no such file or directory") {
        Some(EXIT_NOT_FOUND)
    } else if exec.contains("permission denied") || exec.contains("exec format error") {
        Some(EXIT_NOT_EXECUTABLE)
    } else {
        None
    }
}

/// Reads the pipe until EOF, forwarding each chunk as it arrives; keeps reading after the
/// receiver is gone so that the step never blocks on a full pipe. Signals `done` at EOF.
fn forward_output(
    mut pipe: std::io::PipeReader,
    output: UnboundedSender<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = output.send(buf[..n].to_vec());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = done.send(());
}

/// Cgroup directories of `cgroups_path` in every mounted hierarchy (v1 controllers and the
/// unified one).
fn cgroup_dirs(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Kills whatever is left in the step's cgroups and removes them (runc normally did).
async fn sweep_cgroups(cgroups_path: &str) {
    let dirs = cgroup_dirs(cgroups_path);
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Some(pid) = pid.trim().parse::<i32>().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    for d in dirs {
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Err(e) = std::fs::remove_dir(&d) {
            if e.kind() == std::io::ErrorKind::NotFound || Instant::now() >= deadline {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %d.display(), error = %e, "remove step cgroup");
                }
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Waits (polling, so it works from any runtime) until `child` exited; false on timeout.
async fn wait_exited(child: &mut tokio::process::Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops a running step and removes everything it made on the host; each part is idempotent,
/// so running it twice (drop after a failed normal cleanup) is fine. Returns the first error;
/// later parts are still attempted.
async fn cleanup(rt: &Runtime, res: &mut StepResources) -> Result<(), RuntimeError> {
    let cfg = rt.config();
    let runc = Runc::new(&cfg.runc_root);
    let id = &res.container;
    let mut first: Option<RuntimeError> = None;
    let mut note = |e: RuntimeError| {
        if first.is_none() {
            first = Some(e);
        }
    };

    if let Some(child) = res.runc_child.as_mut() {
        // SIGKILL to the container: the foreground runc sees its init die, removes the
        // container and exits. Repeated, since runc may still be creating it.
        let deadline = Instant::now() + KILL_WAIT;
        while !wait_exited(child, Duration::ZERO).await && Instant::now() < deadline {
            if let Err(e) = runc.kill(id, "KILL").await {
                tracing::debug!(step = %id, error = %cove_types::error::chain(&e), "runc kill");
            }
            wait_exited(child, Duration::from_millis(50)).await;
        }
        if !wait_exited(child, Duration::ZERO).await {
            let _ = child.start_kill();
            wait_exited(child, KILL_WAIT).await;
        }
    }
    res.runc_child = None;
    match runc.state(id).await {
        Ok(None) => {}
        Ok(Some(state)) => {
            if state.status != "stopped" {
                let _ = runc.kill(id, "KILL").await;
                let deadline = Instant::now() + KILL_WAIT;
                while Instant::now() < deadline {
                    match runc.state(id).await {
                        Ok(Some(s)) if s.status != "stopped" => tokio::time::sleep(POLL).await,
                        _ => break,
                    }
                }
            }
            if let Err(e) = runc.delete(id).await {
                note(e.into());
            }
        }
        Err(e) => note(e.into()),
    }
    sweep_cgroups(&res.cgroups_path).await;

    let mut mounts = disk::mounts_under(&res.dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        if let Err(source) = disk::unmount(&m) {
            note(RuntimeError::Storage { id: id.clone(), source: Box::new(source) });
        }
    }
    if let (Some(netns), Some(ip)) = (&res.netns, res.ip_key.as_deref().and_then(|k| rt.ip(k)))
        && let Err(e) = crate::firewall::forget_port(&rt.config().bridge, netns, ip).await
    {
        tracing::warn!(step = %id, error = %cove_types::error::chain(&e), "anti-spoofing entry");
    }
    if let Some(netns) = &res.netns {
        if let Err(source) = net::teardown(netns, netns).await {
            note(RuntimeError::Network { id: id.clone(), source: Box::new(source) });
        } else {
            res.netns = None;
        }
    }
    if let Some(key) = res.ip_key.take() {
        rt.release_ip(&key);
    }
    if !disk::is_mountpoint(&res.dir.join("rootfs")) {
        match std::fs::remove_dir_all(&res.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => note(RuntimeError::RemoveBundle { path: res.dir.clone(), source }),
        }
    }
    first.map_or(Ok(()), Err)
}

impl Runtime {
    fn steps_dir(&self) -> PathBuf {
        self.config().root.join(STEPS_DIR)
    }

    fn step_cgroups_path(&self, container: &str) -> String {
        format!("{}/{container}", self.config().cgroup_parent.trim_end_matches('/'))
    }

    fn validate_step(&self, spec: &StepSpec) -> Result<(), RuntimeError> {
        let bad = |why: String| RuntimeError::InvalidSpec { id: format!("{CONTAINER_PREFIX}{}", spec.id), why };
        if !valid_step_id(&spec.id) {
            return Err(bad("step id must be 1-64 of [A-Za-z0-9_-]".into()));
        }
        if spec.disk_mib < 8 {
            return Err(bad(format!("disk_mib {} is below the 8 MiB minimum", spec.disk_mib)));
        }
        if spec.lowers.is_empty() {
            return Err(bad("at least one lower dir is needed (an empty one for FROM scratch)".into()));
        }
        for p in spec.lowers.iter().chain([&spec.upper]) {
            if !p.is_absolute() || !p.is_dir() {
                return Err(bad(format!("{} is not an absolute directory", p.display())));
            }
        }
        if spec.argv.is_empty() || spec.argv.iter().any(|a| a.contains('\0')) {
            return Err(bad("argv must be non-empty and without NUL".into()));
        }
        if !spec.workdir.starts_with('/') || spec.workdir.contains('\0') {
            return Err(bad(format!("workdir {:?} is not absolute", spec.workdir)));
        }
        if spec.env.iter().any(|e| !e.contains('=') || e.contains('\0')) {
            return Err(bad("env entries must be K=V without NUL".into()));
        }
        if spec.cpu == 0 || spec.memory_mib < 6 || spec.pids == 0 {
            return Err(bad("cpu and pids must be positive, memory at least 6 MiB".into()));
        }
        Ok(())
    }

    /// Runs one build step to completion: mounts the overlay of `spec.lowers` with
    /// `spec.upper`, runs `spec.argv` in the foreground with runc (isolated like a sandbox,
    /// see the module docs), sends its stdout and stderr (one stream, in order) to `output`
    /// chunk by chunk as they arrive, then removes the container, cgroup, network namespace,
    /// mount and temporary files. Returns the command's exit code (128 + n when killed by
    /// signal n; 127 with runc's message in the output when the command does not exist, 126
    /// when it cannot be executed). `spec.upper` then holds the step's changes in overlay
    /// format. Dropping the future kills the step and cleans up before the drop returns.
    #[tracing::instrument(skip_all, fields(step = %spec.id))]
    pub async fn run_step(&self, spec: &StepSpec, output: UnboundedSender<Vec<u8>>) -> Result<i32, RuntimeError> {
        self.validate_step(spec)?;
        let t0 = Instant::now();
        let steps = self.steps_dir();
        std::fs::create_dir_all(&steps).map_err(|source| RuntimeError::Dir { path: steps.clone(), source })?;
        let dir = steps.join(&spec.id);
        let container = format!("{CONTAINER_PREFIX}{}", spec.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: container });
            }
            Err(source) => return Err(RuntimeError::Dir { path: dir, source }),
        }
        let mut guard = StepGuard {
            rt: self,
            res: StepResources {
                cgroups_path: self.step_cgroups_path(&container),
                container,
                dir,
                netns: None,
                ip_key: None,
                runc_child: None,
            },
            armed: true,
        };
        let result = self.run_step_inner(spec, &mut guard.res, output).await;
        let cleaned = cleanup(self, &mut guard.res).await;
        guard.armed = false;
        let code = result?;
        cleaned?;
        tracing::info!(exit_code = code, ms = t0.elapsed().as_millis() as u64, "step finished");
        Ok(code)
    }

    async fn run_step_inner(
        &self,
        spec: &StepSpec,
        res: &mut StepResources,
        output: UnboundedSender<Vec<u8>>,
    ) -> Result<i32, RuntimeError> {
        let cfg = self.config();
        let id = res.container.clone();
        let storage = |source: DiskError| RuntimeError::Storage { id: id.clone(), source: Box::new(source) };
        let rootfs = res.dir.join("rootfs");
        let etc = res.dir.join("etc");
        let t = Instant::now();

        // Like a sandbox, the step runs in the user namespace (its lowers idmapped) and writes
        // to a disk of its own size; what it wrote is copied out, back in image ids, at the end.
        crate::runtime::restrict_dir(&res.dir, cfg.userns.start)
            .map_err(|source| RuntimeError::Dir { path: res.dir.clone(), source })?;
        let (image, disk_dir) = (res.dir.join("disk.img"), res.dir.join("disk"));
        if !self.take_pooled_disk(spec.disk_mib, &image) {
            disk::create_image(&image, spec.disk_mib, self.disk_reserve(), self.config().sparse_disks)
                .await
                .map_err(storage)?;
        }
        disk::mount_image(&image, &disk_dir).await.map_err(storage)?;
        let upper = disk_dir.join("upper");
        self.userns().chown_root(&upper).map_err(|e| RuntimeError::Userns(Box::new(e)))?;
        disk::mount_overlay_layers(&spec.lowers, &upper, &disk_dir.join("work"), &rootfs, Some(self.userns()))
            .map_err(storage)?;
        // The image's trust store with the server's extra certificates: a layer of its own on
        // top of the image's, made from what the image holds (see `cabundle`).
        let ca_layer = res.dir.join("ca-layer");
        if self.ca_certificates_layer(&rootfs, &ca_layer, cfg.userns.start)? {
            disk::unmount(&rootfs).map_err(storage)?;
            let lowers: Vec<PathBuf> = std::iter::once(ca_layer).chain(spec.lowers.iter().cloned()).collect();
            disk::mount_overlay_layers(&lowers, &upper, &disk_dir.join("work"), &rootfs, Some(self.userns()))
                .map_err(storage)?;
        }
        let user = user::resolve(&rootfs, spec.user.as_deref())
            .map_err(|source| RuntimeError::ResolveUser { id: id.clone(), source })?;
        let workdir = clean_components(&spec.workdir);
        mkdir_in_root(&rootfs, &workdir, cfg.userns.start)
            .map_err(|source| RuntimeError::Dir { path: rootfs.join(workdir.join("/")), source })?;
        let cwd = format!("/{}", workdir.join("/"));

        // With network, runc's new namespace is wired to the bridge by the createRuntime hook,
        // as for sandboxes; without, it has loopback only.
        let netns_path = if spec.network {
            let name = step_netns_name(&cfg.name_prefix, &spec.id);
            res.ip_key = Some(id.clone());
            let ip = self.allocate_ip(&id)?;
            res.netns = Some(name.clone());
            net::teardown(&name, &name)
                .await
                .map_err(|source: NetError| RuntimeError::Network { id: id.clone(), source: Box::new(source) })?;
            Some((net::attach_hook(&name, &name, &cfg.bridge, ip, self.cidr()), ip))
        } else {
            None
        };

        std::fs::create_dir_all(&etc).map_err(|source| RuntimeError::Dir { path: etc.clone(), source })?;
        let mut hosts = format!("127.0.0.1\tlocalhost {STEP_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some((_, ip)) = &netns_path {
            hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{STEP_HOSTNAME}\n");
        }
        for (name, text) in
            [("hosts", hosts), ("hostname", format!("{STEP_HOSTNAME}\n")), ("resolv.conf", self.resolv_conf())]
        {
            let p = etc.join(name);
            std::fs::write(&p, text).map_err(io_file("write", &p))?;
        }

        let ca_bundle = self.write_ca_bundle(&rootfs, &etc)?;
        let mut env = spec.env.clone();
        env_default(&mut env, "PATH", oci::DEFAULT_PATH);
        env_default(&mut env, "HOME", &user.home);
        if ca_bundle.is_some() {
            for var in crate::cabundle::ENV_VARS {
                env_default(&mut env, var, crate::cabundle::SANDBOX_PATH);
            }
        }
        let params = BundleParams {
            id: id.clone(),
            rootfs: rootfs.clone(),
            hostname: STEP_HOSTNAME.into(),
            entrypoint: Vec::new(),
            env: Vec::new(),
            workdir: Some(cwd.clone()),
            user,
            cpu: spec.cpu,
            memory_mib: spec.memory_mib,
            pids: spec.pids,
            privileged: false,
            cgroups_path: res.cgroups_path.clone(),
            network_hook: netns_path.as_ref().map(|(h, _)| h.clone()),
            idmap: Some(cfg.userns),
            // No agent in a step: these mounts are taken out again below.
            agent_binary: PathBuf::new(),
            toolbox_dir: PathBuf::new(),
            etc_hosts: etc.join("hosts"),
            etc_hostname: etc.join("hostname"),
            etc_resolv: etc.join("resolv.conf"),
            ca_bundle,
            host_caps: self.host_caps(),
            nofile: oci::host_nofile_limit(),
            seccomp: Some(self.seccomp_spec().clone()),
            engine: None,
        };
        let config = step_config(oci::config(&params), spec, env, &cwd);
        let created = missing_in_root(&rootfs, &rootfs_mount_points(&config));
        let path = res.dir.join("config.json");
        let json = serde_json::to_vec_pretty(&config).map_err(|e| io_file("write", &path)(e.into()))?;
        // 0600: it holds the step's environment (build arguments).
        write_private(&path, &json).map_err(io_file("write", &path))?;
        let prepare_ms = t.elapsed().as_millis() as u64;

        // One pipe for stdout and stderr, so that their order is kept; read on a thread.
        let spawn_err = |source| RuntimeError::from(RuncError::Spawn { id: id.clone(), source });
        let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let writer2 = writer.try_clone().map_err(spawn_err)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("step-output".into())
            .spawn(move || forward_output(reader, output, done_tx))
            .map_err(spawn_err)?;
        let log = res.dir.join("runc.log");
        let runc = Runc::new(&cfg.runc_root);
        // The write ends live only in the child (and the container) from here on: EOF comes
        // when the step's last process is gone.
        let child = runc.spawn_foreground(&id, &res.dir, &log, writer.into(), writer2.into())?;
        let child = res.runc_child.insert(child);
        let status = child.wait().await.map_err(spawn_err)?;
        res.runc_child = None;
        if tokio::time::timeout(DRAIN_TIMEOUT, done_rx).await.is_err() {
            tracing::warn!("step output still open after runc exited");
        }
        remove_created(&rootfs, &created);

        let errors = runc_errors(&log);
        let code = match status.code() {
            Some(code) if errors.is_empty() => code,
            _ => match errors.iter().find_map(|e| exec_failure_code(e)) {
                Some(code) => code,
                None => {
                    let log_text = if errors.is_empty() { status.to_string() } else { errors.join("; ") };
                    return Err(RuncError::Run { id, status: status.to_string(), log: log_text }.into());
                }
            },
        };
        tracing::debug!(prepare_ms, run_ms = t.elapsed().as_millis() as u64 - prepare_ms, exit_code = code, "step ran");
        if code == 0 {
            let (src, dst) = (upper.clone(), spec.upper.clone());
            let r = cfg.userns;
            let shift = Some(crate::copytree::IdShift { start: r.start, count: r.count });
            // A thread of its own: the copy recurses per directory level (see copytree::STACK_SIZE).
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("step-copy-out".into())
                .stack_size(crate::copytree::STACK_SIZE)
                .spawn(move || {
                    let _ = tx.send(crate::copytree::copy_upper(&src, &dst, shift));
                })
                .map_err(|source| RuntimeError::Dir { path: spec.upper.clone(), source })?;
            let stats = rx
                .await
                .map_err(|e| RuntimeError::Dir { path: spec.upper.clone(), source: std::io::Error::other(e) })?
                .map_err(|e| RuntimeError::CopyOut(Box::new(e)))?;
            tracing::debug!(files = stats.files, bytes = stats.bytes, "step changes copied out");
        }
        Ok(code)
    }

    /// Removes what steps left behind when the process died mid-step: their runc containers,
    /// cgroups, network namespaces, mounts and directories. Best effort (logged).
    pub(crate) async fn remove_step_leftovers(&self) {
        let cfg = self.config();
        let runc = Runc::new(&cfg.runc_root);
        let steps = self.steps_dir();
        let mut containers: Vec<String> =
            runc.container_ids().into_iter().filter(|c| c.starts_with(CONTAINER_PREFIX)).collect();
        if let Ok(rd) = std::fs::read_dir(&steps) {
            for e in rd.flatten() {
                if let Some(name) = e.file_name().to_str() {
                    let c = format!("{CONTAINER_PREFIX}{name}");
                    if !containers.contains(&c) {
                        containers.push(c);
                    }
                }
            }
        }
        for container in containers {
            let step_id = container.trim_start_matches(CONTAINER_PREFIX).to_string();
            tracing::info!(step = %container, "removing a build step left by a crash");
            let netns = step_netns_name(&cfg.name_prefix, &step_id);
            let mut res = StepResources {
                cgroups_path: self.step_cgroups_path(&container),
                container,
                dir: steps.join(&step_id),
                netns: Some(netns),
                ip_key: None,
                runc_child: None,
            };
            if let Err(e) = cleanup(self, &mut res).await {
                tracing::warn!(error = %cove_types::error::chain(&e), "remove leftover build step");
            }
        }
        // Step netns whose step id is unknown (the directory was already gone).
        let prefix = format!("{}-", cfg.name_prefix);
        if let Ok(rd) = std::fs::read_dir(net::NETNS_DIR) {
            for e in rd.flatten() {
                if let Some(name) = e.file_name().to_str().filter(|n| n.starts_with(&prefix))
                    && let Err(e) = net::teardown(name, name).await
                {
                    tracing::warn!(netns = name, error = %cove_types::error::chain(&e), "remove leftover step netns");
                }
            }
        }
    }
}

/// Turns a sandbox's `config.json` into a step's: the command instead of the agent, no agent
/// or toolbox mounts, no `COVE_*` variables, the step's cwd, and a private network namespace
/// (loopback only) unless the step has one on the bridge.
fn step_config(mut config: Value, spec: &StepSpec, env: Vec<String>, cwd: &str) -> Value {
    config["process"]["args"] = json!(spec.argv);
    config["process"]["env"] = json!(env);
    config["process"]["cwd"] = json!(cwd);
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|m| {
            let d = m["destination"].as_str().unwrap_or_default();
            d != oci::AGENT_PATH && d != oci::TOOLBOX_DIR
        });
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StepSpec {
        StepSpec {
            id: "abc".into(),
            lowers: vec!["/l".into()],
            upper: "/u".into(),
            disk_mib: 64,
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            workdir: "/src".into(),
            user: None,
            network: false,
            cpu: 1,
            memory_mib: 64,
            pids: 32,
        }
    }

    fn sandbox_config() -> Value {
        json!({
            "process": {"args": [oci::AGENT_PATH, "sleep"], "env": ["COVE_SANDBOX_ID=x"], "cwd": "/root"},
            "mounts": [
                {"destination": "/proc"}, {"destination": "/dev"}, {"destination": "/dev/pts"},
                {"destination": "/sys"}, {"destination": "/sys/fs/cgroup"},
                {"destination": oci::AGENT_PATH}, {"destination": oci::TOOLBOX_DIR},
                {"destination": "/etc/hosts"}, {"destination": "/etc/resolv.conf"},
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}]},
        })
    }

    #[test]
    fn a_step_config_runs_the_command_without_agent_or_toolbox() {
        let c = step_config(sandbox_config(), &spec(), vec!["A=1".into()], "/src");
        assert_eq!(c["process"]["args"], json!(["/bin/sh", "-c", "true"]));
        assert_eq!(c["process"]["env"], json!(["A=1"]));
        assert_eq!(c["process"]["cwd"], "/src");
        let dests: Vec<&str> =
            c["mounts"].as_array().unwrap().iter().filter_map(|m| m["destination"].as_str()).collect();
        assert!(!dests.contains(&oci::AGENT_PATH) && !dests.contains(&oci::TOOLBOX_DIR));
        assert!(dests.contains(&"/etc/hosts"));
    }

    #[test]
    fn only_mount_points_on_the_root_filesystem_and_their_parents_are_tracked() {
        let c = step_config(sandbox_config(), &spec(), vec![], "/");
        assert_eq!(rootfs_mount_points(&c), ["proc", "dev", "sys", "etc", "etc/hosts", "etc/resolv.conf"]);
    }

    #[test]
    fn step_netns_names_fit_interface_names_and_cannot_be_sandbox_names() {
        let n = step_netns_name("cv", "some-step");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("cv-"));
        assert_eq!(n, step_netns_name("cv", "some-step"));
        assert_ne!(n, step_netns_name("cv", "other-step"));
        assert_eq!(step_netns_name("abcdefg", "x").len(), 15);
    }

    #[test]
    fn exec_failures_map_to_shell_exit_codes() {
        let missing =
            "runc run failed: unable to start container process: exec: \"nope\": executable file not found in $PATH";
        assert_eq!(exec_failure_code(missing), Some(127));
        let abs =
            "runc run failed: unable to start container process: exec: \"/x\": stat /x: no such file or directory";
        assert_eq!(exec_failure_code(abs), Some(127));
        let perm = "runc run failed: unable to start container process: exec: \"/etc/passwd\": permission denied";
        assert_eq!(exec_failure_code(perm), Some(126));
        assert_eq!(exec_failure_code("runc run failed: cgroup: no such file or directory"), None);
    }

    #[test]
    fn workdirs_are_cleaned_lexically() {
        assert_eq!(clean_components("/a/./b/../c/"), ["a", "c"]);
        assert_eq!(clean_components("/../.."), Vec::<&str>::new());
    }

    #[test]
    fn step_ids_are_safe_names() {
        assert!(valid_step_id("build-1_layer-3"));
        for bad in ["", "a/b", "..", "a.b", &"x".repeat(65)] {
            assert!(!valid_step_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_mount_point_is_not_created_through_a_symlink_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        mkdir_in_root(root.path(), &["etc", "made"], 0).unwrap_err();
        assert!(!outside.path().join("made").exists());
        std::fs::create_dir(root.path().join("src")).unwrap();
        mkdir_in_root(root.path(), &["src", "a", "b"], 0).unwrap();
        assert!(root.path().join("src/a/b").is_dir());
        std::fs::write(outside.path().join("hosts"), "host").unwrap();
        remove_created(root.path(), &["etc/hosts".to_string()]);
        assert!(outside.path().join("hosts").exists());
    }
}
