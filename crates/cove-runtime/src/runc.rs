//! The `runc` command line: the only place in Cove that runs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use crate::cmd::{self, CommandError};

/// The runc binary (looked up in `PATH`; Debian installs it as `/usr/sbin/runc`).
pub const RUNC: &str = "runc";

/// A failed runc invocation.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// `runc run -d` or `runc create` failed; `log` is the end of runc's own log.
    #[error("runc run {id} failed ({status}): {log}")]
    Run {
        /// Container id.
        id: String,
        /// Exit status.
        status: String,
        /// The end of `runc.log`.
        log: String,
    },
    /// Could not start runc or open its output files.
    #[error("start runc for {id}")]
    Spawn {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Releasing a created container through its exec fifo failed.
    #[error("start container {id} through its exec fifo")]
    StartFifo {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `runc start` of a created container failed.
    #[error("runc start {id}")]
    Start {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// `runc state` failed for another reason than "does not exist".
    #[error("runc state {id}")]
    State {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// `runc state` printed something unexpected.
    #[error("parse runc state of {id}")]
    ParseState {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// `runc kill` failed for a running container.
    #[error("runc kill {id} {signal}")]
    Kill {
        /// Container id.
        id: String,
        /// The signal.
        signal: String,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// `runc delete` failed.
    #[error("runc delete {id}")]
    Delete {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// The container did not stop in time after SIGKILL.
    #[error("container {id} still running after SIGKILL")]
    KillTimeout {
        /// Container id.
        id: String,
    },
}

/// What `runc state` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Host pid of the container's init (0 once stopped).
    #[serde(default)]
    pub pid: u32,
}

/// What Cove reads of runc's `state.json` (runc 1.x).
#[derive(Debug, Deserialize)]
struct OnDisk {
    init_process_pid: u32,
    init_process_start: u64,
    #[serde(default)]
    cgroup_paths: std::collections::HashMap<String, String>,
    #[serde(default)]
    config: OnDiskConfig,
    /// `cove` for containers Cove's launcher made (`crate::launch`); runc's own have none.
    #[serde(default)]
    launcher: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct OnDiskConfig {
    #[serde(rename = "Hooks", default)]
    hooks: Option<std::collections::HashMap<String, Option<Vec<serde_json::Value>>>>,
}

impl OnDisk {
    /// Whether a `poststop` hook is recorded (runc would run it at delete).
    fn has_poststop_hooks(&self) -> bool {
        self.config
            .hooks
            .as_ref()
            .and_then(|h| h.get("poststop"))
            .is_some_and(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
    }
}

/// Whether the init recorded in `disk` still runs: its pid exists, is not a zombie, and has
/// the recorded start time (else the pid now belongs to another process).
fn init_alive(disk: &OnDisk) -> bool {
    proc_state_and_start(disk.init_process_pid)
        .is_some_and(|(state, start)| !matches!(state, 'Z' | 'X' | 'x') && start == disk.init_process_start)
}

/// A process's state letter (field 3 of `/proc/<pid>/stat`) and start time (field 22, what
/// runc records as `init_process_start`); `None` when it is gone or unreadable.
pub(crate) fn proc_state_and_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may contain anything): state first,
    // start time twentieth.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((rest.first()?.chars().next()?, rest.get(19)?.parse().ok()?))
}

/// Removes a cgroup directory and any below it, deepest first; gone is fine. A cgroup still
/// holding a process (just killed, not yet reaped) answers `EBUSY`: retried for up to
/// [`CGROUP_RMDIR_WAIT`].
pub(crate) fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    let deadline = std::time::Instant::now() + CGROUP_RMDIR_WAIT;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a delete waits for a stopped container's cgroup to empty.
const CGROUP_RMDIR_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// runc with one state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
}

/// How long a created container's init may take to write its exec fifo once released.
const FIFO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn missing(e: &CommandError) -> bool {
    let s = e.stderr();
    s.contains("does not exist") || s.contains("not found")
}

impl Runc {
    /// runc keeping its state under `root`.
    pub fn new(root: &Path) -> Self {
        Runc { root: root.to_path_buf() }
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let mut v: Vec<&std::ffi::OsStr> = vec!["--root".as_ref(), self.root.as_os_str()];
        v.extend(rest.iter().map(|s| std::ffi::OsStr::new(*s)));
        v
    }

    /// `runc run -d`: the container's stdio goes to `console` (appended), runc's own log to
    /// `log`. Returns when runc has started the container and exited; the container outlives
    /// us (it is reparented to PID 1).
    pub async fn run_detached(&self, id: &str, bundle: &Path, console: &Path, log: &Path) -> Result<(), RuncError> {
        self.launch(&["run", "--detach"], id, bundle, console, log).await
    }

    /// `runc create`: the container exists with its namespaces, mounts and cgroup, but its
    /// process waits before `execve` until [`Runc::start`]. stdio and logs as `run_detached`.
    pub async fn create(&self, id: &str, bundle: &Path, console: &Path, log: &Path) -> Result<(), RuncError> {
        self.launch(&["create"], id, bundle, console, log).await
    }

    /// Starts a created container: its process proceeds to `execve`. Returns `Ok(false)` when
    /// the container was not waiting to start (gone, running or stopped).
    ///
    /// This does what `runc start` does without paying for a second runc process (~10 ms):
    /// runc's init blocks opening `<root>/<id>/exec.fifo` for writing until someone reads it;
    /// reading it to the end releases the init, and removing it marks the container running
    /// (runc reports `created` exactly while the fifo exists). Without the fifo (another runc
    /// layout) it falls back to `runc start`.
    pub async fn start(&self, id: &str) -> Result<bool, RuncError> {
        let start_err = |source| RuncError::StartFifo { id: id.into(), source };
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Ok(false);
        }
        let fifo = self.root.join(id).join("exec.fifo");
        match std::fs::symlink_metadata(&fifo) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.root.join(id).join("state.json").exists() {
                    return Ok(false);
                }
                // Known from runc's files (every container Cove's launcher made, too): without
                // its fifo it is not waiting to start.
                if self.read_state(id).is_some() {
                    return Ok(false);
                }
                return match cmd::run(RUNC, &self.args(&["start", id]), None).await {
                    Ok(_) => Ok(true),
                    Err(e)
                        if missing(&e)
                            || e.stderr().contains("cannot start")
                            || e.stderr().contains("not in created state") =>
                    {
                        Ok(false)
                    }
                    Err(source) => Err(RuncError::Start { id: id.into(), source }),
                };
            }
            Err(e) => return Err(start_err(e)),
        }
        // The init's blocked open already counts as a writer, so a non-blocking reader cannot
        // see a spurious end of file before it writes.
        let mut rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&fifo).map_err(start_err)?;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(FIFO_TIMEOUT, tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut buf)).await;
        match read {
            Ok(r) => {
                r.map_err(start_err)?;
            }
            Err(_) => {
                return Err(start_err(std::io::Error::new(std::io::ErrorKind::TimedOut, "exec.fifo never closed")));
            }
        }
        drop(rx);
        if let Err(e) = std::fs::remove_file(&fifo)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(start_err(e));
        }
        // Nothing read: no init was waiting behind the fifo.
        Ok(!buf.is_empty())
    }

    async fn launch(&self, sub: &[&str], id: &str, bundle: &Path, console: &Path, log: &Path) -> Result<(), RuncError> {
        let spawn_err = |source| RuncError::Spawn { id: id.into(), source };
        let out = std::fs::OpenOptions::new().create(true).append(true).open(console).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let status = tokio::process::Command::new(RUNC)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("text")
            .args(sub)
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(bundle.join("init.pid"))
            .arg(id)
            // Never a pipe: `run -d` hands its stdio to the container (see the notes, §7.1).
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .await
            .map_err(spawn_err)?;
        if !status.success() {
            let text = std::fs::read(log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or(&text));
            let console_text = std::fs::read_to_string(console).unwrap_or_default();
            let msg = if new.trim().is_empty() { console_text } else { new.into_owned() };
            return Err(RuncError::Run { id: id.into(), status: status.to_string(), log: cmd::tail(&msg, 2000) });
        }
        Ok(())
    }

    /// The container's state, or `None` when runc does not know it. runc keeps a container's
    /// state in `<root>/<id>/`; without that directory it does not know the container either,
    /// so that case is answered without running it.
    ///
    /// The answer is read from runc's own files as runc itself derives it (see
    /// [`Runc::read_state`]); a `runc state` process (~6 ms of CPU, a Go program starting) is
    /// run only when those files are not what runc 1.x writes. The sandbox monitor asks this
    /// of every started sandbox every two seconds: with hundreds of sandboxes a process per
    /// question would take a core.
    pub async fn state(&self, id: &str) -> Result<Option<State>, RuncError> {
        if !id.is_empty() && !id.contains('/') && id != "." && id != ".." {
            match std::fs::symlink_metadata(self.root.join(id)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                _ => {}
            }
            if let Some(state) = self.read_state(id) {
                return Ok(Some(state));
            }
        }
        self.state_from_runc(id).await
    }

    /// `<root>/<id>/state.json` as runc 1.x writes it; `None` when missing or in another form.
    fn on_disk(&self, id: &str) -> Option<OnDisk> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return None;
        }
        let raw = std::fs::read(self.root.join(id).join("state.json")).ok()?;
        let disk: OnDisk = serde_json::from_slice(&raw).ok()?;
        // The launcher records pid 0 until its init exists: a stopped container.
        (disk.init_process_pid != 0 || disk.launcher.as_deref() == Some("cove")).then_some(disk)
    }

    /// `runc kill` without a runc process: the signal goes to the recorded init through a
    /// pidfd taken before its identity (pid and start time) is checked, so that it can never
    /// reach another process that reused the pid. `None`: not decidable here (another state
    /// layout, another signal name, an unexpected error); the caller runs runc.
    fn kill_native(&self, id: &str, signal: &str) -> Option<Result<(), RuncError>> {
        use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
        let sig = match signal {
            "KILL" => Signal::KILL,
            "TERM" => Signal::TERM,
            _ => return None,
        };
        let disk = self.on_disk(id)?;
        if disk.init_process_pid == 0 {
            return Some(Ok(()));
        }
        let pid = Pid::from_raw(i32::try_from(disk.init_process_pid).ok()?)?;
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            // Gone: as with runc, killing a stopped container is not an error here.
            Err(rustix::io::Errno::SRCH) => return Some(Ok(())),
            Err(_) => return None,
        };
        if !init_alive(&disk) {
            return Some(Ok(()));
        }
        match pidfd_send_signal(&pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Some(Ok(())),
            Err(_) => None,
        }
    }

    /// `runc delete` of a stopped container without a runc process: its cgroups (every
    /// hierarchy runc recorded, and anything below them) and its state directory are removed.
    /// `None`: left to runc (not stopped, a `poststop` hook to run, a cgroup that would not
    /// go, another state layout).
    fn delete_native(&self, id: &str) -> Option<()> {
        let disk = self.on_disk(id)?;
        if disk.has_poststop_hooks() || self.read_state(id)?.status != "stopped" {
            return None;
        }
        for path in disk.cgroup_paths.values() {
            let path = Path::new(path);
            // Only cgroup directories (as runc recorded them) are ever removed.
            if !path.starts_with("/sys/fs/cgroup/") {
                return None;
            }
            if let Err(e) = remove_cgroup(path) {
                tracing::debug!(container = id, cgroup = %path.display(), error = %e, "cgroup left to runc delete");
                return None;
            }
        }
        match std::fs::remove_dir_all(self.root.join(id)) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(_) => None,
        }
    }

    /// What runc's `state` command reports, derived the way runc 1.x derives it
    /// (`libcontainer`'s `refreshState`): `paused` while the freezer cgroup is frozen; else
    /// `stopped` when the init process recorded in `state.json` is gone, a zombie, or another
    /// process with its pid (its start time differs); else `created` while `exec.fifo`
    /// exists; else `running`. `None` when `state.json` is missing or not in that form: the
    /// caller then asks runc.
    pub fn read_state(&self, id: &str) -> Option<State> {
        let dir = self.root.join(id);
        let disk = self.on_disk(id)?;
        let frozen = match (disk.cgroup_paths.get("freezer"), disk.cgroup_paths.get("")) {
            (Some(v1), _) => {
                std::fs::read_to_string(Path::new(v1).join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            }
            (None, Some(v2)) => {
                std::fs::read_to_string(Path::new(v2).join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
            (None, None) => false,
        };
        let alive = init_alive(&disk);
        let status = if frozen {
            "paused"
        } else if !alive {
            "stopped"
        } else if dir.join("exec.fifo").exists() {
            "created"
        } else {
            "running"
        };
        let pid = if status == "stopped" { 0 } else { disk.init_process_pid };
        Some(State { status: status.into(), pid })
    }

    /// `runc state`, run as a process.
    pub async fn state_from_runc(&self, id: &str) -> Result<Option<State>, RuncError> {
        match cmd::run(RUNC, &self.args(&["state", id]), None).await {
            Ok(out) => {
                serde_json::from_str(&out).map(Some).map_err(|source| RuncError::ParseState { id: id.into(), source })
            }
            Err(e) if missing(&e) => Ok(None),
            Err(source) => Err(RuncError::State { id: id.into(), source }),
        }
    }

    /// Sends `signal` to the container's init; a container that is gone or already stopped is
    /// not an error.
    ///
    /// Done from here when runc's files say enough (`kill_native`); else by runc.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        if let Some(done) = self.kill_native(id, signal) {
            return done;
        }
        match cmd::run(RUNC, &self.args(&["kill", id, signal]), None).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) || e.stderr().contains("not running") || e.stderr().contains("finished") => Ok(()),
            Err(source) => Err(RuncError::Kill { id: id.into(), signal: signal.into(), source }),
        }
    }

    /// `runc resume` (a paused container cannot act on SIGTERM); failures are ignored.
    pub async fn resume(&self, id: &str) {
        let _ = cmd::run(RUNC, &self.args(&["resume", id]), None).await;
    }

    /// `runc delete --force`: kills the container if it runs and removes it; failures are
    /// logged (a create being undone).
    pub async fn delete_force(&self, id: &str) {
        // A container whose files runc 1.x's layout describes (every one Cove's launcher
        // made, too): killed and removed from here.
        if self.on_disk(id).is_some() && matches!(self.kill_native(id, "KILL"), Some(Ok(()))) {
            for _ in 0..200 {
                if self.read_state(id).is_none_or(|s| s.status == "stopped") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let (native, owned) = (self.clone(), id.to_string());
            if let Ok(Some(())) = tokio::task::spawn_blocking(move || native.delete_native(&owned)).await {
                return;
            }
        }
        if let Err(e) = cmd::run(RUNC, &self.args(&["delete", "--force", id]), None).await
            && !missing(&e)
        {
            tracing::warn!(container = id, error = %cove_types::error::chain(&e), "runc delete --force");
        }
    }

    /// `runc delete` of a stopped container (removes its cgroup and state); missing is fine.
    ///
    /// Done from here for a stopped container (`delete_native`); else by runc.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        let (native, owned) = (self.clone(), id.to_string());
        // Blocking: a cgroup may take a few milliseconds to empty after the kill.
        if let Ok(Some(())) = tokio::task::spawn_blocking(move || native.delete_native(&owned)).await {
            return Ok(());
        }
        match cmd::run(RUNC, &self.args(&["delete", id]), None).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(source) => Err(RuncError::Delete { id: id.into(), source }),
        }
    }
}

/// For one-shot build steps (`crate::step`).
impl Runc {
    /// `runc run` in the foreground: the container's stdout and stderr are `stdout` and
    /// `stderr` (runc hands its own stdio to the container, and writes its own errors to the
    /// same stderr), stdin is `/dev/null`, runc's log goes to `log`. The child exits with the
    /// container's exit code (128 + n after signal n), or non-zero with an error in `log` when
    /// runc itself failed; runc removes the container when it exits, unless it is killed.
    pub fn spawn_foreground(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<tokio::process::Child, RuncError> {
        tokio::process::Command::new(RUNC)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("text")
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| RuncError::Spawn { id: id.into(), source })
    }

    /// Ids of the containers in this state directory (`runc list` without running runc).
    pub fn container_ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runc state directory for `id` whose init is this test process (start time `start`).
    fn state_dir(root: &Path, id: &str, start: u64, cgroups: serde_json::Value) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({
            "id": id, "init_process_pid": std::process::id(), "init_process_start": start,
            "cgroup_paths": cgroups,
        });
        std::fs::write(dir.join("state.json"), json.to_string()).unwrap();
    }

    fn own_start() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap()
    }

    #[test]
    fn a_live_init_is_running_and_created_while_its_exec_fifo_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        state_dir(tmp.path(), "c1", own_start(), serde_json::json!({}));
        let running = State { status: "running".into(), pid: std::process::id() };
        assert_eq!(runc.read_state("c1"), Some(running));
        std::fs::write(tmp.path().join("c1/exec.fifo"), "").unwrap();
        assert_eq!(runc.read_state("c1").unwrap().status, "created");
    }

    #[test]
    fn an_init_whose_pid_now_belongs_to_another_process_is_stopped_with_pid_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        state_dir(tmp.path(), "c1", own_start() + 1, serde_json::json!({}));
        assert_eq!(runc.read_state("c1"), Some(State { status: "stopped".into(), pid: 0 }));
    }

    #[test]
    fn a_frozen_freezer_cgroup_is_paused_in_v1_and_v2() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        let (v1, v2) = (tmp.path().join("freezer"), tmp.path().join("unified"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("freezer.state"), "FROZEN\n").unwrap();
        std::fs::write(v2.join("cgroup.freeze"), "1\n").unwrap();
        state_dir(tmp.path(), "v1", own_start(), serde_json::json!({"freezer": v1, "": v2}));
        state_dir(tmp.path(), "v2", own_start(), serde_json::json!({"": v2}));
        assert_eq!(runc.read_state("v1").unwrap().status, "paused");
        assert_eq!(runc.read_state("v2").unwrap().status, "paused");
        std::fs::write(v1.join("freezer.state"), "THAWED\n").unwrap();
        assert_eq!(runc.read_state("v1").unwrap().status, "running");
    }

    #[test]
    fn a_kill_never_reaches_a_process_that_reused_the_inits_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        // The recorded init is "this test process" with another start time: the pid was reused.
        state_dir(tmp.path(), "c1", own_start() + 1, serde_json::json!({}));
        assert!(matches!(runc.kill_native("c1", "KILL"), Some(Ok(()))));
        // Still here. A signal by another name is left to runc.
        assert!(runc.kill_native("c1", "HUP").is_none());
    }

    #[test]
    fn a_delete_with_a_poststop_hook_or_of_a_live_container_is_left_to_runc() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        state_dir(tmp.path(), "live", own_start(), serde_json::json!({}));
        assert_eq!(runc.delete_native("live"), None);
        assert!(tmp.path().join("live/state.json").exists());
        let dir = tmp.path().join("hooked");
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({
            "init_process_pid": std::process::id(), "init_process_start": own_start() + 1,
            "config": {"Hooks": {"poststop": [{"path": "/bin/true"}], "prestart": null}},
        });
        std::fs::write(dir.join("state.json"), json.to_string()).unwrap();
        assert_eq!(runc.delete_native("hooked"), None);
        assert!(dir.join("state.json").exists());
    }

    #[test]
    fn a_state_file_in_another_form_is_left_to_runc() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc::new(tmp.path());
        std::fs::create_dir_all(tmp.path().join("c1")).unwrap();
        assert_eq!(runc.read_state("c1"), None, "no state.json");
        std::fs::write(tmp.path().join("c1/state.json"), r#"{"pid": 5}"#).unwrap();
        assert_eq!(runc.read_state("c1"), None, "other fields");
    }
}
