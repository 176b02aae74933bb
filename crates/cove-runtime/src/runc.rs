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
    /// `runc run -d` failed; `log` is the end of runc's own log.
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
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Host pid of the container's init (0 once stopped).
    #[serde(default)]
    pub pid: u32,
}

/// runc with one state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
}

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
            .arg("run")
            .arg("--detach")
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
    pub async fn state(&self, id: &str) -> Result<Option<State>, RuncError> {
        if !id.is_empty() && !id.contains('/') && id != "." && id != ".." {
            match std::fs::symlink_metadata(self.root.join(id)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                _ => {}
            }
        }
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
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
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

    /// `runc delete` of a stopped container (removes its cgroup and state); missing is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        match cmd::run(RUNC, &self.args(&["delete", id]), None).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(source) => Err(RuncError::Delete { id: id.into(), source }),
        }
    }
}
