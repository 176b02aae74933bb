//! PTY sessions: real terminals for the SDKs' `create_pty_session` / `createPty` and the
//! dashboard's terminal.
//!
//! Contract (the Daytona toolbox API, as both official SDKs speak it):
//!
//! - `POST /process/pty` `{id, cwd?, envs?, cols?, rows?, lazyStart?}` → 201 `{sessionId}`;
//!   `GET /process/pty/create-connect?id&cols&rows&cwd` creates and attaches in one WebSocket
//!   (the SDKs' way), with `envs` as the subprotocol token `X-Daytona-Pty-Envs~<base64url JSON>`.
//!   Bad input answers 400 and a taken id 409, before any upgrade.
//! - `GET /process/pty` → `{sessions: [info]}`; `GET /process/pty/{id}` → info
//!   `{id, cwd, envs, cols, rows, createdAt, active, lazyStart}`; `POST /process/pty/{id}/resize`
//!   `{cols, rows}` (1..=1000) → info; `DELETE /process/pty/{id}` kills the session → 200.
//! - `GET /process/pty/{id}/connect` (WebSocket): the agent sends the text frame
//!   `{"type":"control","status":"connected"}` first, then the terminal's output as binary
//!   frames; every binary or text frame from the client is written to the terminal as is.
//!   When the shell exits, a client that offered the subprotocol `X-Daytona-Pty-Exit-Control`
//!   (which the agent selects) first gets `{"type":"control","status":"exited","exitCode":N,
//!   "exitReason"?:R}`; every client then gets a close frame, 1000 for exit code 0 and 1011
//!   otherwise, whose reason is `{"exitCode":N,"exitReason"?:R}`. Connecting to a session that
//!   does not exist answers `{"type":"control","status":"error","error":…}` and closes.
//!   A client that disconnects only detaches: the shell keeps running for the next one.
//!
//! The shell is the agent user's login shell from `/etc/passwd` (else the first shell found),
//! run as `<shell> -i -l` in a new session whose controlling terminal is the pty's slave, in
//! `cwd`, with the agent's environment (minus `COVE_*`) plus `envs` (`TERM` defaults to
//! `xterm-256color`). A session leaves the list when its shell exits or is killed; a kill
//! SIGKILLs every process of the terminal's session, so background jobs go too.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{ApiError, ErrorKind, chain};
use crate::server::AppState;
use crate::sys;

/// The subprotocol by which a client asks for the `exited` control message.
pub const EXIT_CONTROL_SUBPROTOCOL: &str = "X-Daytona-Pty-Exit-Control";
/// The prefix of the subprotocol token that carries `envs` (base64url, no padding, of a JSON
/// object of strings).
pub const ENVS_SUBPROTOCOL_PREFIX: &str = "X-Daytona-Pty-Envs~";
/// Largest accepted `cols` and `rows`.
pub const MAX_SIZE: u16 = 1000;
/// How long output is still relayed after the shell exited, for processes that keep the
/// terminal open a moment longer.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);
/// Output chunks kept for a client that reads slower than the terminal writes; a client that
/// falls further behind is disconnected rather than stalling the terminal for everyone.
const OUTPUT_BACKLOG: usize = 512;
/// The id that would shadow the create-connect route.
const RESERVED_ID: &str = "create-connect";

/// `POST /process/pty` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    /// Chosen by the client; unique among live sessions.
    pub id: Option<String>,
    /// Where the shell starts (relative to the agent's working directory); default that.
    pub cwd: Option<String>,
    /// Added to the shell's environment.
    pub envs: Option<HashMap<String, String>>,
    /// Default 80.
    pub cols: Option<u16>,
    /// Default 24.
    pub rows: Option<u16>,
    /// Start the shell at the first connect instead of now.
    pub lazy_start: Option<bool>,
}

/// `GET /process/pty/create-connect` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnectQuery {
    id: Option<String>,
    cwd: Option<String>,
    cols: Option<u16>,
    rows: Option<u16>,
}

/// `POST /process/pty/{id}/resize` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeRequest {
    cols: u16,
    rows: u16,
}

/// `PtySessionInfo`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PtyInfo {
    /// The id.
    pub id: String,
    /// Where the shell started.
    pub cwd: String,
    /// The variables added to the shell's environment.
    pub envs: BTreeMap<String, String>,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// ISO 8601, UTC.
    pub created_at: String,
    /// Whether the shell runs.
    pub active: bool,
    /// Whether the shell waited for the first connect.
    pub lazy_start: bool,
}

/// `{sessions}`.
#[derive(Debug, Serialize)]
struct ListResponse {
    sessions: Vec<PtyInfo>,
}

/// A failed PTY operation.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// No id, or one that cannot name a session.
    #[error(
        "invalid PTY session id {id:?}: it must be 1 to 128 characters, without '/' or control characters, and not {RESERVED_ID:?}"
    )]
    InvalidId {
        /// As sent.
        id: String,
    },
    /// cols or rows out of range.
    #[error("invalid terminal size {cols}x{rows}: cols and rows must be between 1 and {MAX_SIZE}")]
    InvalidSize {
        /// As sent.
        cols: u16,
        /// As sent.
        rows: u16,
    },
    /// The body or query could not be read.
    #[error("invalid PTY request: {0}")]
    InvalidRequest(String),
    /// `cwd` is not a directory.
    #[error("invalid cwd {cwd}")]
    InvalidCwd {
        /// As resolved.
        cwd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Taken.
    #[error("PTY session {id} already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// No such session (never created, exited or killed).
    #[error("PTY session {id} not found")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The terminal could not be allocated.
    #[error("allocate a pseudo-terminal")]
    OpenPty(#[source] std::io::Error),
    /// The shell could not be started.
    #[error("start shell {shell}")]
    Spawn {
        /// The shell.
        shell: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TIOCSWINSZ failed.
    #[error("resize PTY session {id}")]
    Resize {
        /// The id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl PtyError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PtyError::InvalidId { .. }
            | PtyError::InvalidSize { .. }
            | PtyError::InvalidRequest(_)
            | PtyError::InvalidCwd { .. } => ErrorKind::InvalidArgument,
            PtyError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            PtyError::NotFound { .. } => ErrorKind::NotFound,
            PtyError::OpenPty(_) | PtyError::Spawn { .. } | PtyError::Resize { .. } => ErrorKind::Internal,
        }
    }
}

impl From<PtyError> for ApiError {
    fn from(e: PtyError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

/// How a shell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Shell-style: the code, or 128 + the signal.
    pub code: i32,
    /// Daytona's words for it: none for 0.
    pub reason: Option<String>,
}

impl Exit {
    fn new(code: i32) -> Self {
        let reason = match code {
            0 => None,
            130 => Some("Ctrl+C".to_string()),
            137 => Some("SIGKILL".to_string()),
            143 => Some("SIGTERM".to_string()),
            c if c > 128 => Some(format!("signal {}", c - 128)),
            _ => Some("non-zero exit".to_string()),
        };
        Exit { code, reason }
    }

    /// `{"exitCode":N,"exitReason"?:R}`, plus `type`/`status` for the control message.
    fn json(&self, control: bool) -> String {
        let mut v = serde_json::json!({ "exitCode": self.code });
        if let Some(r) = &self.reason {
            v["exitReason"] = r.as_str().into();
        }
        if control {
            v["type"] = "control".into();
            v["status"] = "exited".into();
        }
        v.to_string()
    }
}

/// The running shell's handles.
#[derive(Debug)]
struct Running {
    master: Arc<AsyncFd<File>>,
    pid: i32,
    input: mpsc::Sender<Bytes>,
}

#[derive(Debug)]
struct Term {
    cols: u16,
    rows: u16,
    started: bool,
    running: Option<Running>,
}

/// One terminal.
#[derive(Debug)]
pub struct PtySession {
    id: String,
    cwd: PathBuf,
    envs: BTreeMap<String, String>,
    created_at: String,
    lazy_start: bool,
    term: Mutex<Term>,
    output: broadcast::Sender<Bytes>,
    exit: watch::Sender<Option<Exit>>,
}

type Registry = Arc<Mutex<HashMap<String, Arc<PtySession>>>>;

/// Every PTY session of the agent.
#[derive(Debug)]
pub struct PtyManager {
    workdir: PathBuf,
    sessions: Registry,
}

impl PtyManager {
    /// Sessions whose relative `cwd` resolves against `workdir`.
    pub fn new(workdir: PathBuf) -> Self {
        PtyManager { workdir, sessions: Registry::default() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a session (and starts its shell unless `lazyStart`). Returns it with a
    /// receiver of its output subscribed before the shell started, so nothing it prints is lost
    /// to a client that attaches right after.
    pub fn create(&self, req: CreateRequest) -> Result<(Arc<PtySession>, broadcast::Receiver<Bytes>), PtyError> {
        let id = req.id.unwrap_or_default();
        if id.is_empty() || id.len() > 128 || id == RESERVED_ID || id.chars().any(|c| c == '/' || c.is_control()) {
            return Err(PtyError::InvalidId { id });
        }
        let (cols, rows) = (req.cols.unwrap_or(80), req.rows.unwrap_or(24));
        check_size(cols, rows)?;
        let cwd = crate::process::resolve(&self.workdir, req.cwd.as_deref().filter(|c| !c.is_empty()));
        match std::fs::metadata(&cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let source = std::io::Error::from(std::io::ErrorKind::NotADirectory);
                return Err(PtyError::InvalidCwd { cwd: cwd.display().to_string(), source });
            }
            Err(source) => return Err(PtyError::InvalidCwd { cwd: cwd.display().to_string(), source }),
        }
        let mut envs: BTreeMap<String, String> = req.envs.unwrap_or_default().into_iter().collect();
        if let Some(bad) = envs.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(PtyError::InvalidRequest(format!("invalid environment variable name {bad:?}")));
        }
        if envs.values().any(|v| v.contains('\0')) {
            return Err(PtyError::InvalidRequest("environment values must not contain NUL".into()));
        }
        envs.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
        let lazy_start = req.lazy_start.unwrap_or(false);
        let (output, rx) = broadcast::channel(OUTPUT_BACKLOG);
        let session = Arc::new(PtySession {
            id: id.clone(),
            cwd,
            envs,
            created_at: crate::error::iso8601(SystemTime::now()),
            lazy_start,
            term: Mutex::new(Term { cols, rows, started: false, running: None }),
            output,
            exit: watch::Sender::new(None),
        });
        {
            let mut map = self.map();
            if map.contains_key(&id) {
                return Err(PtyError::AlreadyExists { id });
            }
            map.insert(id.clone(), session.clone());
        }
        if !lazy_start && let Err(e) = session.start(&self.sessions) {
            self.remove(&session);
            return Err(e);
        }
        tracing::info!(pty_id = %id, cols, rows, lazy_start, "PTY session created");
        Ok((session, rx))
    }

    /// A live session.
    pub fn get(&self, id: &str) -> Result<Arc<PtySession>, PtyError> {
        self.map().get(id).cloned().ok_or_else(|| PtyError::NotFound { id: id.to_string() })
    }

    /// Every live session, by id.
    pub fn list(&self) -> Vec<PtyInfo> {
        let mut v: Vec<PtyInfo> = self.map().values().map(|s| s.info()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Resizes a session's terminal (a lazy one not yet started keeps the size for its start).
    pub fn resize(&self, id: &str, cols: u16, rows: u16) -> Result<PtyInfo, PtyError> {
        check_size(cols, rows)?;
        let s = self.get(id)?;
        {
            let mut term = s.term();
            if let Some(r) = &term.running {
                sys::set_winsize(r.master.get_ref().as_fd(), cols, rows)
                    .map_err(|source| PtyError::Resize { id: id.to_string(), source })?;
            }
            term.cols = cols;
            term.rows = rows;
        }
        tracing::debug!(pty_id = id, cols, rows, "PTY session resized");
        Ok(s.info())
    }

    /// Removes the session and SIGKILLs every process of its terminal; attached clients get
    /// exit code 137 once the shell is reaped.
    pub fn kill(&self, id: &str) -> Result<(), PtyError> {
        let s = self.map().remove(id).ok_or_else(|| PtyError::NotFound { id: id.to_string() })?;
        let pid = s.term().running.as_ref().map(|r| r.pid);
        match pid {
            Some(pid) if pid > 1 => kill_terminal_session(pid),
            // The shell was just reaped; its exit is on its way to the clients.
            Some(_) => {}
            None => {
                // Never started (lazy): there is no shell to reap, so end it here.
                s.exit.send_replace(Some(Exit::new(137)));
            }
        }
        tracing::info!(pty_id = id, ?pid, "PTY session killed");
        Ok(())
    }

    fn remove(&self, session: &Arc<PtySession>) {
        remove_from(&self.sessions, session);
    }
}

fn remove_from(registry: &Registry, session: &Arc<PtySession>) {
    let mut map = registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.get(&session.id).is_some_and(|s| Arc::ptr_eq(s, session)) {
        map.remove(&session.id);
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), PtyError> {
    if cols == 0 || rows == 0 || cols > MAX_SIZE || rows > MAX_SIZE {
        return Err(PtyError::InvalidSize { cols, rows });
    }
    Ok(())
}

impl PtySession {
    fn term(&self) -> std::sync::MutexGuard<'_, Term> {
        self.term.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The info the SDKs read.
    pub fn info(&self) -> PtyInfo {
        let term = self.term();
        PtyInfo {
            id: self.id.clone(),
            cwd: self.cwd.display().to_string(),
            envs: self.envs.clone(),
            cols: term.cols,
            rows: term.rows,
            created_at: self.created_at.clone(),
            active: term.running.is_some(),
            lazy_start: self.lazy_start,
        }
    }

    /// Starts the shell once; later calls do nothing.
    fn start(self: &Arc<Self>, registry: &Registry) -> Result<(), PtyError> {
        let mut term = self.term();
        if term.started {
            return Ok(());
        }
        let (master, slave) = sys::open_pty().map_err(PtyError::OpenPty)?;
        sys::set_winsize(master.as_fd(), term.cols, term.rows).map_err(PtyError::OpenPty)?;
        sys::set_nonblocking(master.as_fd()).map_err(PtyError::OpenPty)?;
        let shell = login_shell();
        let mut cmd = tokio::process::Command::new(&shell);
        cmd.args(["-i", "-l"]).current_dir(&self.cwd);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("COVE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(&self.envs);
        let stdio = || slave.try_clone().map(Stdio::from);
        let spawn_err = |source| PtyError::Spawn { shell: shell.clone(), source };
        cmd.stdin(stdio().map_err(spawn_err)?).stdout(stdio().map_err(spawn_err)?).stderr(stdio().map_err(spawn_err)?);
        sys::controlling_terminal_on_stdin(&mut cmd);
        let spawned = cmd.spawn();
        // Our copies of the slave must go, or the master never sees the terminal hang up.
        drop(cmd);
        drop(slave);
        let mut child = spawned.map_err(spawn_err)?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let master = Arc::new(sys::async_fd(File::from(master)).map_err(PtyError::OpenPty)?);
        let (input, input_rx) = mpsc::channel(256);
        let mut reader = tokio::spawn(read_terminal(master.clone(), self.output.clone()));
        let writer = tokio::spawn(write_terminal(master.clone(), input_rx));
        term.started = true;
        term.running = Some(Running { master, pid, input });
        drop(term);
        tracing::info!(pty_id = %self.id, %shell, pid, "PTY shell started");

        let (session, registry) = (self.clone(), registry.clone());
        tokio::spawn(async move {
            let code = child.wait().await.map_or(-1, crate::process::exit_code);
            // Reaped: the pid may be reused from now on, so a kill must not signal it.
            if let Some(r) = session.term().running.as_mut() {
                r.pid = 0;
            }
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await;
            reader.abort();
            writer.abort();
            session.term().running = None;
            remove_from(&registry, &session);
            tracing::info!(pty_id = %session.id, exit_code = code, "PTY shell exited");
            session.exit.send_replace(Some(Exit::new(code)));
        });
        Ok(())
    }

    fn input(&self) -> Option<mpsc::Sender<Bytes>> {
        self.term().running.as_ref().map(|r| r.input.clone())
    }
}

/// The agent user's login shell if `/etc/passwd` names an executable one, else the first
/// shell found.
fn login_shell() -> String {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| crate::users::login_shell(&passwd, uid))
        .filter(|s| std::fs::metadata(s).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .unwrap_or_else(|| crate::process::find_shell().to_string())
}

/// SIGKILLs every process whose session is the shell's (`setsid` made the shell its leader),
/// then the shell.
fn kill_terminal_session(shell: i32) {
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if pid != shell && session_of(pid) == Some(shell) {
                sys::kill_pid(pid, libc::SIGKILL);
            }
        }
    }
    sys::kill_pid(shell, libc::SIGKILL);
}

/// Field 6 (session id) of `/proc/<pid>/stat`; the command name may contain spaces and
/// parentheses, so fields are counted after its last `)`.
fn session_of(pid: i32) -> Option<i32> {
    parse_session(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The session id (sixth field) of a `/proc/<pid>/stat` line; the command name in
/// parentheses may itself contain spaces and ')'.
fn parse_session(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(3)?.parse().ok()
}

/// Copies the terminal's output to the broadcast until the terminal hangs up (EIO once the
/// last process holding the slave is gone).
async fn read_terminal(master: Arc<AsyncFd<File>>, out: broadcast::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = master.readable().await else { return };
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                // No receiver (nobody attached) is fine: a terminal nobody watches drops output.
                let _ = out.send(Bytes::copy_from_slice(&buf[..n]));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

/// Writes clients' input to the terminal in order.
async fn write_terminal(master: Arc<AsyncFd<File>>, mut input: mpsc::Receiver<Bytes>) {
    while let Some(data) = input.recv().await {
        let mut off = 0;
        while off < data.len() {
            let Ok(mut guard) = master.writable().await else { return };
            match guard.try_io(|f| f.get_ref().write(&data[off..])) {
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether the request offered the exit-control subprotocol, and the envs token's map.
fn subprotocols(headers: &HeaderMap) -> Result<(bool, Option<HashMap<String, String>>), PtyError> {
    let mut exit_control = false;
    let mut envs = None;
    let tokens = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        if token == EXIT_CONTROL_SUBPROTOCOL {
            exit_control = true;
        } else if let Some(encoded) = token.strip_prefix(ENVS_SUBPROTOCOL_PREFIX) {
            let bad =
                |why: String| PtyError::InvalidRequest(format!("the {ENVS_SUBPROTOCOL_PREFIX} subprotocol: {why}"));
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .map_err(|e| bad(format!("not base64url: {e}")))?;
            envs = Some(serde_json::from_slice(&json).map_err(|e| bad(format!("not a JSON object of strings: {e}")))?);
        }
    }
    Ok((exit_control, envs))
}

/// The PTY routes, merged into the toolbox router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/pty", get(list).post(create))
        .route("/process/pty/create-connect", get(create_connect))
        .route("/process/pty/{id}", get(info).delete(kill))
        .route("/process/pty/{id}/resize", post(resize))
        .route("/process/pty/{id}/connect", get(connect))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, PtyError> {
    serde_json::from_slice(body).map_err(|e| PtyError::InvalidRequest(format!("invalid JSON body: {e}")))
}

async fn create(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateRequest = parse_json(&body)?;
    let (session, _) = s.ptys.create(req)?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "sessionId": session.id }))).into_response())
}

async fn list(State(s): State<AppState>) -> Json<ListResponse> {
    Json(ListResponse { sessions: s.ptys.list() })
}

async fn info(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<PtyInfo>, ApiError> {
    Ok(Json(s.ptys.get(&id)?.info()))
}

async fn kill(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<serde_json::Value>, ApiError> {
    s.ptys.kill(&id)?;
    Ok(Json(serde_json::json!({ "message": format!("PTY session {id} killed") })))
}

async fn resize(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Json<PtyInfo>, ApiError> {
    let req: ResizeRequest = parse_json(&body)?;
    Ok(Json(s.ptys.resize(&id, req.cols, req.rows)?))
}

async fn create_connect(
    State(s): State<AppState>,
    query: Result<Query<CreateConnectQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| PtyError::InvalidRequest(e.body_text()))?;
    let (exit_control, envs) = subprotocols(&headers)?;
    let req = CreateRequest { id: q.id, cwd: q.cwd, envs, cols: q.cols, rows: q.rows, lazy_start: None };
    let (session, rx) = s.ptys.create(req)?;
    let (ptys, failed) = (s.ptys.clone(), session.clone());
    Ok(ws
        .protocols([EXIT_CONTROL_SUBPROTOCOL])
        .on_failed_upgrade(move |e| {
            tracing::debug!(pty_id = %failed.id, error = %e, "PTY create-connect upgrade failed: killing the session");
            let _ = ptys.kill(&failed.id);
        })
        .on_upgrade(move |socket| attach(socket, session, rx, exit_control)))
}

async fn connect(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let exit_control = subprotocols(&headers).map(|(e, _)| e).unwrap_or(false);
    let found = s.ptys.get(&id).and_then(|session| {
        // Subscribe before a lazy session starts, so its first prompt reaches this client.
        let rx = session.output.subscribe();
        session.start(&s.ptys.sessions)?;
        Ok((session, rx))
    });
    ws.protocols([EXIT_CONTROL_SUBPROTOCOL]).on_upgrade(move |mut socket| async move {
        match found {
            Ok((session, rx)) => attach(socket, session, rx, exit_control).await,
            Err(e) => {
                let error = format!("Failed to connect to PTY session: {}", chain(&e));
                let msg = serde_json::json!({ "type": "control", "status": "error", "error": error });
                let _ = socket.send(Message::Text(msg.to_string().into())).await;
                let reason = serde_json::json!({ "error": truncate(&error, 100) }).to_string();
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1011, reason: reason.into() }))).await;
            }
        }
    })
}

/// `s` cut to at most `max` bytes on a character boundary (close reasons are limited to 123).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Relays one client: `connected`, then output and input both ways until the shell exits
/// (exit message and close frame) or the client leaves (the shell keeps running).
async fn attach(
    mut socket: WebSocket,
    session: Arc<PtySession>,
    mut rx: broadcast::Receiver<Bytes>,
    exit_control: bool,
) {
    let connected = serde_json::json!({ "type": "control", "status": "connected" }).to_string();
    if socket.send(Message::Text(connected.into())).await.is_err() {
        return;
    }
    let input = session.input();
    let mut exit = session.exit.subscribe();
    tracing::debug!(pty_id = %session.id, "client attached to PTY session");
    loop {
        if exit.borrow_and_update().is_some() {
            break;
        }
        tokio::select! {
            biased;
            out = rx.recv() => match out {
                Ok(data) => if socket.send(Message::Binary(data)).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(pty_id = %session.id, skipped = n, "PTY client too slow: disconnected");
                    let close = CloseFrame { code: 1008, reason: "slow consumer".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = exit.changed() => if changed.is_err() { break },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(data))) => send_input(&input, data).await,
                Some(Ok(Message::Text(text))) => send_input(&input, Bytes::from(text.as_str().to_owned())).await,
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    tracing::debug!(pty_id = %session.id, "client detached from PTY session");
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // The shell is gone: what it printed last is already in the channel.
    while let Ok(data) = rx.try_recv() {
        if socket.send(Message::Binary(data)).await.is_err() {
            return;
        }
    }
    let end = exit.borrow().clone().unwrap_or_else(|| Exit::new(-1));
    if exit_control {
        let _ = socket.send(Message::Text(end.json(true).into())).await;
    }
    let code = if end.code == 0 { 1000 } else { 1011 };
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: end.json(false).into() }))).await;
}

async fn send_input(input: &Option<mpsc::Sender<Bytes>>, data: Bytes) {
    if let Some(tx) = input {
        // A closed channel means the shell is ending; the exit message follows.
        let _ = tx.send(data).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_follow_daytonas_words_and_zero_has_none() {
        assert_eq!(Exit::new(0).json(false), r#"{"exitCode":0}"#);
        assert_eq!(Exit::new(137).reason.as_deref(), Some("SIGKILL"));
        assert_eq!(Exit::new(130).reason.as_deref(), Some("Ctrl+C"));
        assert_eq!(Exit::new(129).reason.as_deref(), Some("signal 1"));
        assert_eq!(Exit::new(3).reason.as_deref(), Some("non-zero exit"));
        let v: serde_json::Value = serde_json::from_str(&Exit::new(3).json(true)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type": "control", "status": "exited", "exitCode": 3, "exitReason": "non-zero exit"})
        );
    }

    #[test]
    fn the_envs_subprotocol_decodes_and_a_malformed_one_is_refused() {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"A":"1","B":"x y"}"#);
        let value = format!("{EXIT_CONTROL_SUBPROTOCOL}, {ENVS_SUBPROTOCOL_PREFIX}{token}");
        h.insert(axum::http::header::SEC_WEBSOCKET_PROTOCOL, value.parse().expect("header"));
        let (exit_control, envs) = subprotocols(&h).expect("valid");
        assert!(exit_control);
        let envs = envs.expect("envs");
        assert_eq!((envs["A"].as_str(), envs["B"].as_str()), ("1", "x y"));
        h.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            format!("{ENVS_SUBPROTOCOL_PREFIX}!!").parse().expect("h"),
        );
        assert!(matches!(subprotocols(&h), Err(PtyError::InvalidRequest(_))));
        assert!(!subprotocols(&HeaderMap::new()).expect("none").0);
    }

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    struct Agent {
        _dir: tempfile::TempDir,
        work: PathBuf,
        addr: std::net::SocketAddr,
        http: reqwest_lite::Http,
    }

    /// Just enough HTTP/1.1 over a TCP socket for the JSON routes (the agent has no HTTP client).
    mod reqwest_lite {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Http(pub std::net::SocketAddr);

        impl Http {
            pub async fn call(
                &self,
                method: &str,
                path: &str,
                body: Option<serde_json::Value>,
            ) -> (u16, serde_json::Value) {
                let mut s = tokio::net::TcpStream::connect(self.0).await.expect("connect");
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.expect("write");
                let mut resp = Vec::new();
                s.read_to_end(&mut resp).await.expect("read");
                let text = String::from_utf8_lossy(&resp).to_string();
                let status = text[9..12].parse().expect("status");
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
                (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
            }
        }
    }

    async fn agent() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::server::test_config(dir.path());
        let work = config.workdir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(axum::serve(listener, crate::server::app(AppState::new(config))).into_future());
        Agent { _dir: dir, work, addr, http: reqwest_lite::Http(addr) }
    }

    impl Agent {
        async fn ws(&self, path_and_query: &str, protocols: &str) -> Client {
            let mut req = format!("ws://{}{path_and_query}", self.addr).into_client_request().expect("request");
            req.headers_mut().insert("sec-websocket-protocol", protocols.parse().expect("header"));
            let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket");
            assert_eq!(resp.headers()["sec-websocket-protocol"], EXIT_CONTROL_SUBPROTOCOL);
            ws
        }
    }

    /// Output (binary frames) until `want` appears in it; control messages are collected.
    async fn read_until(ws: &mut Client, want: &str, controls: &mut Vec<serde_json::Value>) -> String {
        let mut out = Vec::new();
        let read = async {
            while let Some(msg) = ws.next().await {
                match msg.expect("frame") {
                    WsMessage::Binary(b) => out.extend_from_slice(&b),
                    WsMessage::Text(t) => controls.push(serde_json::from_str(&t).expect("control json")),
                    WsMessage::Close(c) => panic!("closed early: {c:?}; output {:?}", String::from_utf8_lossy(&out)),
                    _ => {}
                }
                if String::from_utf8_lossy(&out).contains(want) {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), read).await.is_err() {
            panic!("{want:?} never came; output {:?}", String::from_utf8_lossy(&out));
        }
        String::from_utf8_lossy(&out).to_string()
    }

    /// The exit control message and the close frame's code and reason, skipping output.
    async fn read_exit(ws: &mut Client) -> (Option<serde_json::Value>, u16, serde_json::Value) {
        let mut control = None;
        let read = async {
            while let Some(msg) = ws.next().await {
                match msg.expect("frame") {
                    WsMessage::Text(t) => control = Some(serde_json::from_str(&t).expect("json")),
                    WsMessage::Close(Some(c)) => {
                        return (u16::from(c.code), serde_json::from_str(&c.reason).expect("reason json"));
                    }
                    WsMessage::Close(None) => panic!("close without a frame"),
                    _ => {}
                }
            }
            panic!("stream ended without a close frame");
        };
        let (code, reason) = tokio::time::timeout(Duration::from_secs(10), read).await.expect("the shell exits");
        (control, code, reason)
    }

    #[tokio::test]
    async fn a_terminal_has_the_requested_size_follows_a_resize_runs_interactive_input_and_reports_its_exit() {
        let a = agent().await;
        std::fs::create_dir(a.work.join("sub")).expect("mkdir");
        let envs = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"GREETING":"hi there"}"#);
        let protocols = format!("{EXIT_CONTROL_SUBPROTOCOL}, {ENVS_SUBPROTOCOL_PREFIX}{envs}");
        let mut ws = a.ws("/process/pty/create-connect?id=t1&cols=100&rows=30&cwd=sub", &protocols).await;
        let mut controls = Vec::new();
        ws.send(WsMessage::Binary("stty size; pwd; echo \"[$GREETING|$TERM]\"\n".into())).await.expect("send");
        let out = read_until(&mut ws, "[hi there|xterm-256color]", &mut controls).await;
        assert_eq!(controls.first(), Some(&serde_json::json!({"type": "control", "status": "connected"})));
        assert!(out.contains("30 100\r\n"), "{out:?}");
        assert!(out.contains(&format!("{}\r\n", a.work.join("sub").display())), "{out:?}");

        let (s, info) =
            a.http.call("POST", "/process/pty/t1/resize", Some(serde_json::json!({"cols": 120, "rows": 40}))).await;
        assert_eq!((s, info["cols"].as_u64(), info["rows"].as_u64()), (200, Some(120), Some(40)));
        ws.send(WsMessage::Text("stty size\n".into())).await.expect("send");
        read_until(&mut ws, "40 120\r\n", &mut controls).await;

        ws.send(WsMessage::Binary("read x; echo got:$x\n".into())).await.expect("send");
        ws.send(WsMessage::Binary("typed\n".into())).await.expect("send");
        read_until(&mut ws, "got:typed", &mut controls).await;

        let (s, list) = a.http.call("GET", "/process/pty", None).await;
        assert_eq!(s, 200);
        let info = &list["sessions"][0];
        assert_eq!(
            (info["id"].as_str(), info["active"].as_bool(), info["lazyStart"].as_bool()),
            (Some("t1"), Some(true), Some(false))
        );
        assert_eq!(info["envs"], serde_json::json!({"GREETING": "hi there", "TERM": "xterm-256color"}));
        assert_eq!(info["cwd"], a.work.join("sub").display().to_string());
        assert!(info["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{info}");

        ws.send(WsMessage::Binary("exit 3\n".into())).await.expect("send");
        let (control, code, reason) = read_exit(&mut ws).await;
        let want =
            serde_json::json!({"type": "control", "status": "exited", "exitCode": 3, "exitReason": "non-zero exit"});
        assert_eq!(control, Some(want));
        assert_eq!((code, reason), (1011, serde_json::json!({"exitCode": 3, "exitReason": "non-zero exit"})));
        let (s, _) = a.http.call("GET", "/process/pty/t1", None).await;
        assert_eq!(s, 404, "an exited session leaves the list");
    }

    #[tokio::test]
    async fn a_killed_terminal_takes_its_background_jobs_and_reports_137_to_every_client() {
        let a = agent().await;
        let create = serde_json::json!({"id": "k", "cols": 50, "rows": 10});
        let (s, v) = a.http.call("POST", "/process/pty", Some(create.clone())).await;
        assert_eq!((s, v), (201, serde_json::json!({"sessionId": "k"})));
        let (s, _) = a.http.call("POST", "/process/pty", Some(create)).await;
        assert_eq!(s, 409);
        let mut first = a.ws("/process/pty/k/connect", EXIT_CONTROL_SUBPROTOCOL).await;
        let mut second = a.ws("/process/pty/k/connect", EXIT_CONTROL_SUBPROTOCOL).await;
        let mut controls = Vec::new();
        first.send(WsMessage::Binary("sleep 1234 & echo bg:$!\n".into())).await.expect("send");
        read_until(&mut second, "bg:", &mut controls).await;
        // Wait until the job runs, then kill the terminal.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let sleeper = loop {
            let found = std::fs::read_dir("/proc").expect("proc").flatten().find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (cmdline == b"sleep\x001234\x00").then_some(pid)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the background job never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (s, _) = a.http.call("DELETE", "/process/pty/k", None).await;
        assert_eq!(s, 200);
        for ws in [&mut first, &mut second] {
            let (control, code, reason) = read_exit(ws).await;
            assert_eq!(control.map(|c| c["exitCode"].clone()), Some(serde_json::json!(137)));
            assert_eq!((code, reason), (1011, serde_json::json!({"exitCode": 137, "exitReason": "SIGKILL"})));
        }
        let (_, list) = a.http.call("GET", "/process/pty", None).await;
        assert_eq!(list, serde_json::json!({"sessions": []}));
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            session_of(sleeper).is_none()
                || std::fs::read_to_string(format!("/proc/{sleeper}/stat")).is_ok_and(|s| s.contains(") Z "))
        });
        assert!(gone, "the background job outlived the kill");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_any_shell_starts() {
        let a = agent().await;
        for (body, what) in [
            (serde_json::json!({"id": "a", "cols": 0}), "terminal size"),
            (serde_json::json!({"id": "a", "rows": 1001}), "terminal size"),
            (serde_json::json!({"id": "a/b"}), "invalid PTY session id"),
            (serde_json::json!({"cols": 80}), "invalid PTY session id"),
            (serde_json::json!({"id": "a", "cwd": "nope"}), "invalid cwd"),
            (serde_json::json!({"id": "a", "colour": "red"}), "unknown field `colour`"),
        ] {
            let (s, v) = a.http.call("POST", "/process/pty", Some(body.clone())).await;
            assert_eq!(s, 400, "{body}");
            assert!(v["message"].as_str().is_some_and(|m| m.contains(what)), "{body}: {v}");
        }
        let (s, v) =
            a.http.call("POST", "/process/pty/none/resize", Some(serde_json::json!({"cols": 1, "rows": 1}))).await;
        assert_eq!(s, 404, "{v}");
        let (s, _) = a.http.call("DELETE", "/process/pty/none", None).await;
        assert_eq!(s, 404);
        assert_eq!(a.http.call("GET", "/process/pty", None).await.1, serde_json::json!({"sessions": []}));

        // Connecting to a session that does not exist: an error control message, then close.
        let mut ws = a.ws("/process/pty/none/connect", EXIT_CONTROL_SUBPROTOCOL).await;
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("answer");
        let WsMessage::Text(t) = first.expect("frame").expect("ok") else { panic!("no error message") };
        let v: serde_json::Value = serde_json::from_str(&t).expect("json");
        assert_eq!((v["type"].as_str(), v["status"].as_str()), (Some("control"), Some("error")));
        assert!(v["error"].as_str().is_some_and(|e| e.contains("not found")), "{v}");
    }

    #[tokio::test]
    async fn a_lazy_terminal_starts_at_its_first_connect() {
        let a = agent().await;
        let (s, _) =
            a.http.call("POST", "/process/pty", Some(serde_json::json!({"id": "lz", "lazyStart": true}))).await;
        assert_eq!(s, 201);
        let (_, info) = a.http.call("GET", "/process/pty/lz", None).await;
        assert_eq!((info["active"].as_bool(), info["lazyStart"].as_bool()), (Some(false), Some(true)));
        let mut ws = a.ws("/process/pty/lz/connect", EXIT_CONTROL_SUBPROTOCOL).await;
        let mut controls = Vec::new();
        ws.send(WsMessage::Binary("stty size\n".into())).await.expect("send");
        read_until(&mut ws, "24 80\r\n", &mut controls).await;
        assert_eq!(a.http.call("GET", "/process/pty/lz", None).await.1["active"], true);
        ws.send(WsMessage::Binary("exit\n".into())).await.expect("send");
        let (_, code, reason) = read_exit(&mut ws).await;
        assert_eq!((code, reason), (1000, serde_json::json!({"exitCode": 0})));
    }

    #[test]
    fn the_session_field_is_read_after_the_command_name() {
        // A process that leads its own session (util-linux `setsid` execs in place when its
        // caller is not a group leader), not this test's own session: CI launchers may run
        // the test in session 0.
        let mut child = std::process::Command::new("setsid").args(["sleep", "30"]).spawn().expect("setsid");
        let pid = child.id() as i32;
        let mut seen = None;
        for _ in 0..100 {
            seen = session_of(pid);
            if seen == Some(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(seen, Some(pid));
        // A name with spaces and a ')' must not shift the fields: this very process is the
        // one whose name we control least, so check the parser on a made-up stat line too.
        assert_eq!(parse_session("42 (a b) c) S 1 2 77 0"), Some(77));
    }
}
