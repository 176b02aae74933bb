//! `cove-agent [--] [ENTRYPOINT ARGS...]`: the in-sandbox agent. It runs as PID 1 of every
//! sandbox and serves the Daytona toolbox API on a unix socket and on TCP.
//!
//! As PID 1 it forks once before any thread exists: the parent stays PID 1 and only reaps
//! orphans and forwards SIGTERM/SIGINT/SIGHUP, while the child runs the (single-threaded) tokio
//! server and the entrypoint. Keeping reaping out of the server process means `waitpid(-1)` can
//! never steal the exit status of a process tokio is waiting for.
//!
//! Environment: `COVE_TOOLBOX_SOCKET` (default `/run/cove/toolbox.sock`), `COVE_TOOLBOX_PORT`
//! (default 2280, 0 disables TCP), `COVE_WORKDIR` (default `$HOME`, else `/`),
//! `COVE_RUNTIME_DIR` (session fifos; default the socket's directory), `COVE_NO_ENTRYPOINT=1`
//! (start no entrypoint), `COVE_AGENT_LOG` (`error`..`trace`, default `info`), `COVE_ENV_FILE`
//! (extra `K=V` entries, NUL-separated, applied to the agent's own environment at start and then
//! deleted: how a sandbox taken from the server's warm pool receives the request's variables).

mod charts;
mod download;
mod error;
mod files;
mod git;
mod interpreter;
mod logs;
mod lsp;
mod process;
mod pty;
mod search;
mod server;
mod session;
mod sys;
mod unsupported;
mod users;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};

use crate::server::{AppState, Config};

/// The entrypoint when none is given.
const DEFAULT_ENTRYPOINT: [&str; 2] = ["sleep", "infinity"];
const DEFAULT_SOCKET: &str = "/run/cove/toolbox.sock";
const DEFAULT_PORT: u16 = 2280;

/// Everything read from the command line and the environment.
#[derive(Debug)]
struct Settings {
    config: Config,
    socket: PathBuf,
    port: u16,
    entrypoint: Option<Vec<String>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--version") {
        println!("cove-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // Before anything else: a prepared sandbox waits here, and its env file is written just
    // before it is released.
    if let Err(e) = sys::wait_for_release() {
        eprintln!("cove-agent: {}", error::chain(&e));
        std::process::exit(1);
    }
    load_env_file();
    if let Err(e) = sys::set_not_dumpable() {
        eprintln!("cove-agent: {}", error::chain(&e));
    }
    if sys::getpid() == 1 {
        become_supervisor();
    }
    let level = std::env::var("COVE_AGENT_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).init();
    let settings = match settings(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cove-agent: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cove-agent: start runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(run(settings)));
}

/// Applies `COVE_ENV_FILE` (see the module docs); `COVE_*` keys in it are ignored.
fn load_env_file() {
    let Some(path) = std::env::var_os("COVE_ENV_FILE").filter(|p| !p.is_empty()) else { return };
    let Ok(bytes) = std::fs::read(&path) else { return };
    for (key, value) in parse_env_file(&bytes) {
        sys::set_env_single_threaded(key, value);
    }
    if let Err(e) = std::fs::remove_file(&path) {
        eprintln!("cove-agent: remove {}: {e}", PathBuf::from(path).display());
    }
}

/// `K=V` entries separated by NUL; entries without `=`, with an empty key or a `COVE_` key are
/// skipped.
fn parse_env_file(bytes: &[u8]) -> Vec<(&OsStr, &OsStr)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|e| {
            let eq = e.iter().position(|b| *b == b'=')?;
            let (k, v) = (&e[..eq], &e[eq + 1..]);
            (!k.is_empty() && !k.starts_with(b"COVE_")).then(|| (OsStr::from_bytes(k), OsStr::from_bytes(v)))
        })
        .collect()
}

/// Forks; the parent never returns (it supervises and exits with the server's status).
fn become_supervisor() {
    let saved = match sys::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cove-agent: {}; serving without a separate reaper", error::chain(&e));
            return;
        }
    };
    match sys::fork() {
        Ok(sys::Forked::Parent(server)) => std::process::exit(sys::supervise(server)),
        Ok(sys::Forked::Child) => sys::restore_signals(saved),
        Err(e) => {
            sys::restore_signals(saved);
            eprintln!("cove-agent: {}; serving without a separate reaper", error::chain(&e));
        }
    }
}

fn settings(mut args: Vec<String>) -> Result<Settings, String> {
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let socket = PathBuf::from(env("COVE_TOOLBOX_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.into()));
    let port = match env("COVE_TOOLBOX_PORT") {
        None => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("COVE_TOOLBOX_PORT={p:?} is not a port number"))?,
    };
    let home = env("HOME").map(PathBuf::from).or_else(|| {
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        users::Users::load().home_of(uid)
    });
    let workdir = env("COVE_WORKDIR").map(PathBuf::from).or_else(|| home.clone().filter(|h| h.is_dir()));
    let workdir = workdir.unwrap_or_else(|| PathBuf::from("/"));
    let runtime_dir = env("COVE_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| {
        socket.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("/run/cove"), PathBuf::from)
    });
    let entrypoint = if env("COVE_NO_ENTRYPOINT").is_some_and(|v| v != "0") {
        None
    } else if args.is_empty() {
        Some(DEFAULT_ENTRYPOINT.iter().map(|s| s.to_string()).collect())
    } else {
        Some(args)
    };
    let home = home.unwrap_or_else(|| PathBuf::from("/"));
    Ok(Settings { config: Config { workdir, home, runtime_dir }, socket, port, entrypoint })
}

async fn run(s: Settings) -> i32 {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        workdir = %s.config.workdir.display(),
        "cove-agent starting"
    );
    let state = AppState::new(s.config);
    // Listening first: the server's readiness check waits for this socket, not for the
    // entrypoint's `execve` (a `PATH` search and an exec of its own).
    let listeners = match server::bind(&s.socket, s.port).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %error::chain(&e), "cove-agent stopping");
            return 1;
        }
    };
    if let Some(entry) = &s.entrypoint {
        state.sessions.start_entrypoint(entry);
    }
    let router = server::app(state.clone());
    tokio::select! {
        r = server::serve(router, listeners) => {
            let msg = match r { Ok(()) => "server stopped".to_string(), Err(e) => error::chain(&e) };
            tracing::error!(error = %msg, "cove-agent stopping");
            1
        }
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "stopping: forwarding the signal to the entrypoint");
            state.sessions.shutdown(sig).await;
            0
        }
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP; returns its number.
async fn shutdown_signal() -> libc::c_int {
    let kinds = [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::hangup(), libc::SIGHUP),
    ];
    let mut streams = Vec::new();
    for (kind, num) in kinds {
        match signal(kind) {
            Ok(s) => streams.push((s, num)),
            Err(e) => tracing::warn!(signal = num, error = %e, "cannot handle signal"),
        }
    }
    if streams.is_empty() {
        return std::future::pending().await;
    }
    let waits = streams.iter_mut().map(|(s, num)| {
        let num = *num;
        Box::pin(async move {
            s.recv().await;
            num
        })
    });
    futures_util::future::select_all(waits).await.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_yield_their_entries_and_skip_malformed_and_cove_keys() {
        let got = parse_env_file(b"A=1\0B=x=y\0\0noequals\0=v\0COVE_TOOLBOX_SOCKET=/x\0MULTI=a\nb\0");
        let got: Vec<(String, String)> =
            got.iter().map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into())).collect();
        let want = [("A", "1"), ("B", "x=y"), ("MULTI", "a\nb")].map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
    }
}
