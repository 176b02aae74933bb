//! The code interpreter: stateful Python contexts, as the SDKs' `code_interpreter` uses them.
//!
//! Contract:
//! - `POST /process/interpreter/context` `{cwd?, language?}` makes a context: one long-lived
//!   `python3` running [`DRIVER`] (passed with `-c`, never written to disk where a process of the
//!   sandbox could change it), started at once so a missing `python3` is a 400 naming it.
//!   `GET` lists the contexts made this way; `DELETE …/context/{id}` kills the context's process
//!   group and forgets it. The context `default` is made on first use, never listed or deleted.
//! - `GET /process/interpreter/execute` is a WebSocket: the client sends one JSON text
//!   `{code, contextId?, envs?, timeout?}`; the agent answers with `{"type":"stdout"|"stderr",
//!   "text"}` and `{"type":"error","name","value","traceback"}` messages as they happen, then
//!   `{"type":"control","text":"completed"}` and close 1000. Runs of a context take turns;
//!   globals, imports and the working directory persist between them.
//! - `timeout` (seconds, default 600, 0 = none) ends with close 4008: the run is interrupted
//!   with SIGINT (the context survives), and if it has not stopped within
//!   [`INTERRUPT_GRACE`] the process group is killed and the next run starts a fresh process.
//!   A client that goes away mid-run interrupts the run the same way.
//! - A request that cannot run closes with 4400 (bad request or no `python3`) or 4404 (unknown
//!   context) and the reason in words.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::error::{ApiError, ErrorKind, iso8601};
use crate::process::{prepare, resolve, which};
use crate::sys;

/// The Python program every context runs.
pub const DRIVER: &str = include_str!("interpreter_driver.py");
/// The id of the context used when a run names none.
pub const DEFAULT_CONTEXT: &str = "default";
/// How long a new interpreter may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a run may take when the request gives no `timeout`.
const DEFAULT_RUN_TIMEOUT: u64 = 600;
/// How long an interrupted run has to stop before its process group is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// Close code of a run that timed out (what the SDKs turn into a timeout error).
pub const CLOSE_TIMEOUT: u16 = 4008;
/// Close code of a request that cannot run.
pub const CLOSE_BAD_REQUEST: u16 = 4400;
/// Close code for an unknown context.
pub const CLOSE_NOT_FOUND: u16 = 4404;

/// `POST /process/interpreter/context` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateContextRequest {
    /// Working directory; relative ones resolve against the agent's workdir.
    pub cwd: Option<String>,
    /// Only `python` is supported.
    pub language: Option<String>,
}

/// The first (and only) message of an execute WebSocket.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    /// Python source.
    pub code: String,
    /// A context from `create_context`; absent: the default context.
    pub context_id: Option<String>,
    /// Environment variables set for this run only.
    pub envs: Option<HashMap<String, String>>,
    /// Seconds; 0 means none, absent means [`DEFAULT_RUN_TIMEOUT`].
    pub timeout: Option<u64>,
}

/// `InterpreterContext` as the SDKs read it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextDto {
    /// The id.
    pub id: String,
    /// Absolute working directory.
    pub cwd: String,
    /// Always `python`.
    pub language: String,
    /// ISO 8601.
    pub created_at: String,
    /// Whether its interpreter process is running.
    pub active: bool,
}

/// `GET /process/interpreter/context` answer.
#[derive(Debug, Serialize)]
pub struct ListContextsResponse {
    /// User-made contexts, oldest first.
    pub contexts: Vec<ContextDto>,
}

/// A failed interpreter operation.
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    /// A language other than Python.
    #[error("unsupported interpreter language {language:?}: only python is supported")]
    UnsupportedLanguage {
        /// As sent.
        language: String,
    },
    /// The working directory is not a directory.
    #[error("context working directory {path} is not a directory")]
    BadCwd {
        /// Resolved.
        path: String,
        /// Why.
        #[source]
        source: Option<std::io::Error>,
    },
    /// No such context.
    #[error("interpreter context {id} not found")]
    NotFound {
        /// As sent.
        id: String,
    },
    /// `DELETE` of the default context.
    #[error("the default interpreter context cannot be deleted")]
    DeleteDefault,
    /// `python3` is not on PATH.
    #[error("python3 is not installed in this sandbox: install python3 to use the code interpreter")]
    PythonMissing,
    /// The process could not be started.
    #[error("start python3 for context {id}")]
    Spawn {
        /// The context.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process started but never said it was ready.
    #[error("python3 for context {id} did not start: {detail}")]
    NotReady {
        /// The context.
        id: String,
        /// Its stderr, or what happened.
        detail: String,
    },
    /// The request could not be sent to the interpreter.
    #[error("send the code to the interpreter of context {id}")]
    Send {
        /// The context.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl InterpreterError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InterpreterError::UnsupportedLanguage { .. }
            | InterpreterError::BadCwd { .. }
            | InterpreterError::DeleteDefault
            | InterpreterError::PythonMissing => ErrorKind::InvalidArgument,
            InterpreterError::NotFound { .. } => ErrorKind::NotFound,
            InterpreterError::Spawn { .. } | InterpreterError::NotReady { .. } | InterpreterError::Send { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// A running interpreter; its process group is killed when dropped.
#[derive(Debug)]
struct Worker {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pgid: u32,
}

impl Drop for Worker {
    fn drop(&mut self) {
        sys::kill_group(self.pgid, libc::SIGKILL);
    }
}

/// One context.
#[derive(Debug)]
pub struct Context {
    id: String,
    cwd: PathBuf,
    created_at: String,
    /// Held for the whole of a run: runs of a context take turns.
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// The running worker's process group, 0 when none (read without the lock, by delete).
    pgid: AtomicU32,
    deleted: AtomicBool,
}

impl Context {
    fn new(id: String, cwd: PathBuf) -> Self {
        Context {
            id,
            cwd,
            created_at: iso8601(SystemTime::now()),
            worker: tokio::sync::Mutex::new(None),
            pgid: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
        }
    }

    fn dto(&self) -> ContextDto {
        ContextDto {
            id: self.id.clone(),
            cwd: self.cwd.display().to_string(),
            language: "python".into(),
            created_at: self.created_at.clone(),
            active: self.pgid.load(Ordering::SeqCst) != 0,
        }
    }

    /// Starts the interpreter into `slot` unless one is running.
    async fn ensure_started(&self, slot: &mut Option<Worker>) -> Result<(), InterpreterError> {
        if slot.is_some() {
            return Ok(());
        }
        let python = which("python3", std::env::var_os("PATH").as_deref()).ok_or(InterpreterError::PythonMissing)?;
        let mut cmd = Command::new(python);
        cmd.args(["-u", "-c", DRIVER]);
        prepare(&mut cmd, &self.cwd, None);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn = |source| InterpreterError::Spawn { id: self.id.clone(), source };
        let mut child = cmd.spawn().map_err(spawn)?;
        let pgid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn(std::io::Error::other("missing stdio pipe")));
        };
        let mut worker = Worker { _child: child, stdin, lines: BufReader::new(stdout).lines(), pgid };
        let first = tokio::time::timeout(START_TIMEOUT, worker.lines.next_line()).await;
        if let Ok(Ok(Some(line))) = &first
            && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"] == "ready")
        {
            // The driver moves its fd 2 away at start; this pipe only ever gets interpreter crashes.
            let id = self.id.clone();
            tokio::spawn(async move {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text).await;
                if !text.trim().is_empty() {
                    tracing::warn!(context = %id, stderr = %text.trim(), "interpreter wrote to its stderr");
                }
            });
            self.pgid.store(pgid, Ordering::SeqCst);
            *slot = Some(worker);
            tracing::info!(context = %self.id, pgid, cwd = %self.cwd.display(), "interpreter started");
            return Ok(());
        }
        drop(worker);
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut text)).await;
        let detail = match first {
            Err(_) => format!("no answer within {} s", START_TIMEOUT.as_secs()),
            _ if text.trim().is_empty() => "it exited without output".to_string(),
            _ => text.trim().to_string(),
        };
        Err(InterpreterError::NotReady { id: self.id.clone(), detail })
    }

    fn stopped(&self, slot: &mut Option<Worker>) {
        *slot = None;
        self.pgid.store(0, Ordering::SeqCst);
    }
}

/// All contexts of the agent.
#[derive(Debug)]
pub struct Interpreters {
    workdir: PathBuf,
    contexts: Mutex<HashMap<String, Arc<Context>>>,
}

/// How a run ended.
enum Outcome {
    Completed,
    TimedOut(u64),
    ClientGone,
}

impl Interpreters {
    /// Contexts whose default working directory is `workdir`.
    pub fn new(workdir: PathBuf) -> Self {
        Interpreters { workdir, contexts: Mutex::default() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a context and starts its interpreter.
    pub async fn create(&self, req: CreateContextRequest) -> Result<ContextDto, InterpreterError> {
        if let Some(l) = req.language.as_deref().filter(|l| !l.is_empty())
            && !matches!(l.to_ascii_lowercase().as_str(), "python" | "python3")
        {
            return Err(InterpreterError::UnsupportedLanguage { language: l.to_string() });
        }
        let cwd = resolve(&self.workdir, req.cwd.as_deref().filter(|c| !c.is_empty()));
        check_dir(&cwd)?;
        let ctx = Arc::new(Context::new(sys::new_uuid().to_string(), cwd));
        {
            let mut slot = ctx.worker.lock().await;
            ctx.ensure_started(&mut slot).await?;
        }
        self.map().insert(ctx.id.clone(), ctx.clone());
        Ok(ctx.dto())
    }

    /// User-made contexts, oldest first.
    pub fn list(&self) -> ListContextsResponse {
        let mut contexts: Vec<ContextDto> =
            self.map().values().filter(|c| c.id != DEFAULT_CONTEXT).map(|c| c.dto()).collect();
        contexts.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        ListContextsResponse { contexts }
    }

    /// Forgets a context and kills its interpreter (a run in progress ends with an error).
    pub fn delete(&self, id: &str) -> Result<(), InterpreterError> {
        if id == DEFAULT_CONTEXT {
            return Err(InterpreterError::DeleteDefault);
        }
        let ctx = self.map().remove(id).ok_or_else(|| InterpreterError::NotFound { id: id.to_string() })?;
        ctx.deleted.store(true, Ordering::SeqCst);
        let pgid = ctx.pgid.swap(0, Ordering::SeqCst);
        if pgid != 0 {
            sys::kill_group(pgid, libc::SIGKILL);
        }
        tracing::info!(context = %id, "interpreter context deleted");
        Ok(())
    }

    fn context(&self, id: Option<&str>) -> Result<Arc<Context>, InterpreterError> {
        let mut map = self.map();
        match id.filter(|i| !i.is_empty()) {
            Some(id) => map.get(id).cloned().ok_or_else(|| InterpreterError::NotFound { id: id.to_string() }),
            None => Ok(map
                .entry(DEFAULT_CONTEXT.to_string())
                .or_insert_with(|| Arc::new(Context::new(DEFAULT_CONTEXT.into(), self.workdir.clone())))
                .clone()),
        }
    }

    /// Serves one execute WebSocket (see the module docs).
    pub async fn serve(self: Arc<Self>, mut socket: WebSocket) {
        let req = match first_request(&mut socket).await {
            Some(Ok(r)) => r,
            Some(Err(message)) => return close(socket, CLOSE_BAD_REQUEST, &message).await,
            None => return,
        };
        let ctx = match self.context(req.context_id.as_deref()) {
            Ok(c) => c,
            Err(e) => return close(socket, close_code(&e), &e.to_string()).await,
        };
        let mut slot = ctx.worker.lock().await;
        if ctx.deleted.load(Ordering::SeqCst) {
            let e = InterpreterError::NotFound { id: ctx.id.clone() };
            return close(socket, CLOSE_NOT_FOUND, &e.to_string()).await;
        }
        if let Err(e) = ctx.ensure_started(&mut slot).await {
            return close(socket, close_code(&e), &crate::error::chain(&e)).await;
        }
        let limit = req.timeout.unwrap_or(DEFAULT_RUN_TIMEOUT);
        tracing::debug!(context = %ctx.id, bytes = req.code.len(), limit, "interpreter run");
        let outcome = match run(&ctx, &mut slot, &mut socket, req, limit).await {
            Ok(o) => o,
            Err(e) => return close(socket, 1011, &crate::error::chain(&e)).await,
        };
        drop(slot);
        match outcome {
            Outcome::Completed => {
                let done = serde_json::json!({"type": "control", "text": "completed"}).to_string();
                if socket.send(Message::Text(done.into())).await.is_ok() {
                    close(socket, 1000, "").await;
                }
            }
            Outcome::TimedOut(secs) => {
                let reason = format!("execution timed out after {secs} seconds and was interrupted");
                close(socket, CLOSE_TIMEOUT, &reason).await;
            }
            Outcome::ClientGone => {}
        }
    }
}

/// Sends the request to the context's interpreter and relays its events until the run ends.
async fn run(
    ctx: &Context,
    slot: &mut Option<Worker>,
    socket: &mut WebSocket,
    req: RunRequest,
    limit: u64,
) -> Result<Outcome, InterpreterError> {
    let Some(worker) = slot.as_mut() else {
        return Err(InterpreterError::NotReady { id: ctx.id.clone(), detail: "no interpreter".into() });
    };
    let mut line = serde_json::json!({"code": req.code, "envs": req.envs.unwrap_or_default()}).to_string();
    line.push('\n');
    if let Err(source) = worker.stdin.write_all(line.as_bytes()).await {
        ctx.stopped(slot);
        return Err(InterpreterError::Send { id: ctx.id.clone(), source });
    }
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut deadline = if limit == 0 { far } else { Instant::now() + Duration::from_secs(limit) };
    let (mut timed_out, mut client_gone, mut interrupted) = (false, false, false);
    while let Some(worker) = slot.as_mut() {
        tokio::select! {
            next = worker.lines.next_line() => match next {
                Ok(Some(event)) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&event) else { continue };
                    if v["type"] == "done" {
                        break;
                    }
                    if !client_gone && socket.send(Message::Text(event.into())).await.is_err() {
                        client_gone = true;
                    }
                }
                Ok(None) | Err(_) => {
                    ctx.stopped(slot);
                    if !interrupted && !client_gone {
                        let value = format!(
                            "the python process of context {} exited; its state is lost and the next run starts a new one",
                            ctx.id
                        );
                        let e = serde_json::json!({"type": "error", "name": "InterpreterExited", "value": value, "traceback": ""});
                        let _ = socket.send(Message::Text(e.to_string().into())).await;
                    }
                    break;
                }
            },
            msg = socket.recv(), if !client_gone => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    client_gone = true;
                    if !interrupted {
                        interrupted = true;
                        sys::kill_group(worker.pgid, libc::SIGINT);
                        deadline = Instant::now() + INTERRUPT_GRACE;
                    }
                }
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                if interrupted {
                    tracing::warn!(context = %ctx.id, "interrupted run did not stop; killing its interpreter");
                    ctx.stopped(slot);
                    break;
                }
                timed_out = true;
                interrupted = true;
                sys::kill_group(worker.pgid, libc::SIGINT);
                deadline = Instant::now() + INTERRUPT_GRACE;
            }
        }
    }
    Ok(if client_gone {
        Outcome::ClientGone
    } else if timed_out {
        Outcome::TimedOut(limit)
    } else {
        Outcome::Completed
    })
}

fn check_dir(path: &Path) -> Result<(), InterpreterError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InterpreterError::BadCwd { path: path.display().to_string(), source: None }),
        Err(e) => Err(InterpreterError::BadCwd { path: path.display().to_string(), source: Some(e) }),
    }
}

fn close_code(e: &InterpreterError) -> u16 {
    match e.kind() {
        ErrorKind::NotFound => CLOSE_NOT_FOUND,
        ErrorKind::Internal => 1011,
        _ => CLOSE_BAD_REQUEST,
    }
}

/// The run request, `None` when the client left first, `Err` with the reason for a bad one.
async fn first_request(socket: &mut WebSocket) -> Option<Result<RunRequest, String>> {
    loop {
        let data = match socket.recv().await? {
            Ok(Message::Text(t)) => t.as_str().as_bytes().to_vec(),
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        };
        return Some(serde_json::from_slice(&data).map_err(|e| format!("invalid execute request: {e}")));
    }
}

/// Closes with `code` and `reason` (cut to the 123 bytes a close frame allows).
async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame { code, reason: reason[..end].to_string().into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
    // Wait briefly for the client's close so the frame is not cut off by a reset.
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

impl From<InterpreterError> for ApiError {
    fn from(e: InterpreterError) -> Self {
        ApiError::new(e.kind(), crate::error::chain(&e))
    }
}

/// The interpreter's routes, over contexts whose default directory is `workdir`.
pub fn routes<S: Clone + Send + Sync + 'static>(workdir: &Path) -> Router<S> {
    Router::new()
        .route("/process/interpreter/context", get(list_contexts).post(create_context))
        .route("/process/interpreter/context/{id}", delete(delete_context))
        .route("/process/interpreter/execute", get(execute))
        .with_state(Arc::new(Interpreters::new(workdir.to_path_buf())))
}

async fn create_context(State(i): State<Arc<Interpreters>>, body: Bytes) -> Result<Json<ContextDto>, ApiError> {
    let req: CreateContextRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CreateContextRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("invalid JSON body: {e}")))?
    };
    Ok(Json(i.create(req).await?))
}

async fn list_contexts(State(i): State<Arc<Interpreters>>) -> Json<ListContextsResponse> {
    Json(i.list())
}

async fn delete_context(
    State(i): State<Arc<Interpreters>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    i.delete(&id)?;
    Ok(Json(serde_json::json!({"message": format!("context {id} deleted")})))
}

async fn execute(State(i): State<Arc<Interpreters>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| i.serve(socket))
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::*;

    fn have_python() -> bool {
        let found = which("python3", std::env::var_os("PATH").as_deref()).is_some();
        if !found {
            eprintln!("skipped: python3 is not installed");
        }
        found
    }

    struct Fixture {
        addr: std::net::SocketAddr,
        dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app: Router = routes(dir.path());
        tokio::spawn(axum::serve(listener, app).into_future());
        Fixture { addr, dir }
    }

    /// The messages of one run and its close code.
    async fn run_code(f: &Fixture, req: serde_json::Value) -> (Vec<serde_json::Value>, Option<u16>) {
        let url = format!("ws://{}/process/interpreter/execute", f.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
        ws.send(WsMessage::Text(req.to_string().into())).await.expect("send");
        let mut out = Vec::new();
        let mut code = None;
        let collect = async {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    WsMessage::Text(t) => out.push(serde_json::from_str(t.as_str()).expect("json")),
                    WsMessage::Close(c) => {
                        code = c.map(|c| u16::from(c.code));
                        break;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), collect).await.expect("run ends");
        (out, code)
    }

    fn stdout(msgs: &[serde_json::Value]) -> String {
        msgs.iter().filter(|m| m["type"] == "stdout").filter_map(|m| m["text"].as_str()).collect()
    }

    async fn http(f: &Fixture, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(f.addr).await.expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        let status = resp[9..12].parse().expect("status");
        let json = resp.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default();
        (status, json)
    }

    #[tokio::test]
    async fn a_context_keeps_its_variables_between_runs_and_two_contexts_are_independent() {
        if !have_python() {
            return;
        }
        let f = fixture().await;
        std::fs::create_dir(f.dir.path().join("sub")).expect("mkdir");
        let (s, a) = http(&f, "POST", "/process/interpreter/context", Some(serde_json::json!({"cwd": "sub"}))).await;
        assert_eq!(s, 200, "{a}");
        assert_eq!((a["language"].as_str(), a["active"].as_bool()), (Some("python"), Some(true)));
        assert_eq!(a["cwd"], f.dir.path().join("sub").display().to_string());
        let (_, b) = http(&f, "POST", "/process/interpreter/context", None).await;
        let (a, b) = (a["id"].as_str().expect("id").to_string(), b["id"].as_str().expect("id").to_string());

        run_code(&f, serde_json::json!({"code": "x = 41\nimport os", "contextId": a})).await;
        run_code(&f, serde_json::json!({"code": "x = 'b'", "contextId": b})).await;
        let (msgs, code) = run_code(&f, serde_json::json!({"code": "print(x + 1, os.getcwd())", "contextId": a})).await;
        assert_eq!(stdout(&msgs), format!("42 {}\n", f.dir.path().join("sub").display()));
        assert_eq!(msgs.last().map(|m| m["type"].clone()), Some("control".into()));
        assert_eq!(code, Some(1000));
        let (msgs, _) = run_code(&f, serde_json::json!({"code": "print(x)", "contextId": b})).await;
        assert_eq!(stdout(&msgs), "b\n");
        // The default context is a third one.
        let (msgs, _) = run_code(&f, serde_json::json!({"code": "print(x)"})).await;
        assert_eq!(msgs[0]["type"], "error");
        assert_eq!(msgs[0]["name"], "NameError");

        let (_, list) = http(&f, "GET", "/process/interpreter/context", None).await;
        let ids: Vec<_> = list["contexts"].as_array().expect("contexts").iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids.len(), 2, "{list}");
        assert!(ids.contains(&a.clone().into()) && ids.contains(&b.into()));
        let (s, _) = http(&f, "DELETE", &format!("/process/interpreter/context/{a}"), None).await;
        assert_eq!(s, 200);
        let (_, code) = run_code(&f, serde_json::json!({"code": "print(x)", "contextId": a})).await;
        assert_eq!(code, Some(CLOSE_NOT_FOUND));
        let (s, _) = http(&f, "DELETE", "/process/interpreter/context/default", None).await;
        assert_eq!(s, 400);
        let (s, v) =
            http(&f, "POST", "/process/interpreter/context", Some(serde_json::json!({"language": "ruby"}))).await;
        assert_eq!(s, 400, "{v}");
        let (s, _) = http(&f, "POST", "/process/interpreter/context", Some(serde_json::json!({"cwd": "nope"}))).await;
        assert_eq!(s, 400);
        let (s, _) = http(&f, "POST", "/process/interpreter/context", Some(serde_json::json!({"cdw": "typo"}))).await;
        assert_eq!(s, 400);
    }

    #[tokio::test]
    async fn output_streams_in_order_with_envs_and_an_exception_is_reported_with_its_traceback() {
        if !have_python() {
            return;
        }
        let f = fixture().await;
        let code = "import sys, os\nprint('one')\nsys.stderr.write('two\\n')\nos.system('echo three')\nprint(os.environ['GREETING'])\ndef f():\n    raise ValueError('bad')\nf()";
        let (msgs, close) = run_code(&f, serde_json::json!({"code": code, "envs": {"GREETING": "hi"}})).await;
        let seen: Vec<(String, String)> = msgs
            .iter()
            .filter(|m| m["type"] == "stdout" || m["type"] == "stderr")
            .map(|m| (m["type"].as_str().unwrap_or("").into(), m["text"].as_str().unwrap_or("").into()))
            .collect();
        let expected = [("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n"), ("stdout", "hi\n")];
        assert_eq!(seen, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        let err = msgs.iter().find(|m| m["type"] == "error").expect("error message");
        assert_eq!((err["name"].as_str(), err["value"].as_str()), (Some("ValueError"), Some("bad")));
        let tb = err["traceback"].as_str().unwrap_or_default();
        assert!(tb.contains("in f") && tb.contains("raise ValueError('bad')") && !tb.contains("driver"), "{tb}");
        assert_eq!(close, Some(1000));
        // The variable was for that run only.
        let (msgs, _) = run_code(&f, serde_json::json!({"code": "import os; print(os.environ.get('GREETING'))"})).await;
        assert_eq!(stdout(&msgs), "None\n");
    }

    #[tokio::test]
    async fn a_timeout_interrupts_the_run_with_4008_and_the_context_keeps_its_state() {
        if !have_python() {
            return;
        }
        let f = fixture().await;
        run_code(&f, serde_json::json!({"code": "kept = 'still here'"})).await;
        let started = std::time::Instant::now();
        let (_, close) =
            run_code(&f, serde_json::json!({"code": "import time\nwhile True: time.sleep(0.1)", "timeout": 1})).await;
        assert_eq!(close, Some(CLOSE_TIMEOUT));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let (msgs, _) = run_code(&f, serde_json::json!({"code": "print(kept)"})).await;
        assert_eq!(stdout(&msgs), "still here\n");
        // A run that ignores the interrupt is killed; the next run gets a fresh interpreter.
        let stubborn =
            "import time\nwhile True:\n    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        pass";
        let (_, close) = run_code(&f, serde_json::json!({"code": stubborn, "timeout": 1})).await;
        assert_eq!(close, Some(CLOSE_TIMEOUT));
        let (msgs, _) = run_code(&f, serde_json::json!({"code": "print('kept' in globals())"})).await;
        assert_eq!(stdout(&msgs), "False\n");
        let (_, close) = run_code(&f, serde_json::json!({"code": 3})).await;
        assert_eq!(close, Some(CLOSE_BAD_REQUEST));
    }
}
