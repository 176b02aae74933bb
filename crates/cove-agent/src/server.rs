//! The toolbox router: thin handlers that extract, call one function of `process`, `files` or
//! `session`, and return a typed body. Also the listeners (unix socket and TCP).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, ErrorKind, chain};
use crate::files::{self, FileError};
use crate::logs::Stream;
use crate::process::{self, CodeRunRequest, ExecuteRequest, ExecuteResponse, ProcessError};
use crate::session::{
    CreateSessionRequest, ExecRequest, LogsResponse, SessionCommand, SessionDto, SessionError, SessionManager,
};

/// Limit for JSON bodies; uploads are streamed to disk and have no limit but the disk.
pub const JSON_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Frame prefix of stdout chunks on the follow WebSocket.
pub const STDOUT_PREFIX: &[u8] = b"\x01\x01\x01";
/// Frame prefix of stderr chunks on the follow WebSocket.
pub const STDERR_PREFIX: &[u8] = b"\x02\x02\x02";

/// Directories the agent works with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where relative paths resolve, and where shells start.
    pub workdir: PathBuf,
    /// The user's home.
    pub home: PathBuf,
    /// Session fifos and command files live under here.
    pub runtime_dir: PathBuf,
}

/// The unit tests' directories under `dir`: `work/` (created here) as the working directory,
/// `dir` itself as home, and `run/` for session files.
#[cfg(test)]
pub(crate) fn test_config(dir: &Path) -> Config {
    let workdir = dir.join("work");
    std::fs::create_dir_all(&workdir).expect("mkdir work");
    Config { workdir, home: dir.to_path_buf(), runtime_dir: dir.join("run") }
}

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Directories.
    pub config: Arc<Config>,
    /// Sessions and the entrypoint.
    pub sessions: Arc<SessionManager>,
    /// PTY sessions.
    pub ptys: Arc<crate::pty::PtyManager>,
}

#[derive(Serialize)]
struct DirResponse {
    dir: String,
}

// Query strings and bodies refuse keys they do not know, naming them (400), instead of dropping
// them: every key either SDK sends to these routes is listed (checked against `daytona` and
// `@daytona/sdk` with their toolbox API clients).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    path: Option<String>,
}

/// `GET /files?path=&depth=`: the SDKs' `list_files(path, depth)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    path: Option<String>,
    depth: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderQuery {
    path: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    path: Option<String>,
    recursive: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveQuery {
    source: Option<String>,
    destination: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionsQuery {
    path: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
struct FollowQuery {
    follow: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputRequest {
    data: String,
}

/// A JSON body parsed whatever its `Content-Type` (the SDKs send `application/json`; curl and
/// probes often send none or a form type).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("read request body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("invalid JSON body: {e}")))
    }
}

impl AppState {
    /// State for `config`.
    pub fn new(config: Config) -> Self {
        let sessions = SessionManager::new(config.workdir.clone(), config.runtime_dir.clone());
        let ptys = Arc::new(crate::pty::PtyManager::new(config.workdir.clone()));
        AppState { config: Arc::new(config), sessions: Arc::new(sessions), ptys }
    }
}

impl From<ProcessError> for ApiError {
    fn from(e: ProcessError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

impl From<crate::download::DownloadError> for ApiError {
    fn from(e: crate::download::DownloadError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

impl From<crate::search::SearchError> for ApiError {
    fn from(e: crate::search::SearchError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

/// The whole toolbox API.
pub fn app(state: AppState) -> Router {
    let unlimited = || DefaultBodyLimit::disable();
    Router::new()
        .route("/version", get(version))
        .route("/user-home-dir", get(user_home_dir))
        .route("/work-dir", get(work_dir))
        .route("/process/execute", post(execute))
        .route("/process/code-run", post(code_run))
        .route("/files", get(list_files).delete(delete_file))
        .route("/files/info", get(file_info))
        .route("/files/download", get(download))
        .route("/files/folder", post(create_folder))
        .route("/files/move", post(move_file))
        .route("/files/permissions", post(set_permissions))
        .route("/files/bulk-download", post(bulk_download))
        .route("/files/find", get(find_in_files))
        .route("/files/search", get(search_files))
        .route("/files/replace", post(replace_in_files))
        .route("/files/bulk-upload", post(bulk_upload).layer(unlimited()))
        .route("/files/upload-v2", post(upload_v2).layer(unlimited()))
        .route("/process/session", get(list_sessions).post(create_session))
        .route("/process/session/entrypoint", get(entrypoint_session))
        .route("/process/session/entrypoint/logs", get(entrypoint_logs))
        .route("/process/session/{id}", get(get_session).delete(delete_session))
        .route("/process/session/{id}/exec", post(session_exec))
        .route("/process/session/{id}/command/{cmd}", get(get_command))
        .route("/process/session/{id}/command/{cmd}/logs", get(command_logs))
        .route("/process/session/{id}/command/{cmd}/input", post(send_input))
        .merge(crate::pty::routes())
        .merge(crate::git::routes())
        .merge(crate::interpreter::routes(&state.config.workdir))
        .merge(crate::lsp::routes(&state.config.workdir))
        .fallback(crate::unsupported::fallback)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::error::envelope_layer))
        .with_state(state)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn user_home_dir(State(s): State<AppState>) -> Json<DirResponse> {
    Json(DirResponse { dir: s.config.home.display().to_string() })
}

async fn work_dir(State(s): State<AppState>) -> Json<DirResponse> {
    Json(DirResponse { dir: s.config.workdir.display().to_string() })
}

async fn execute(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    Ok(Json(process::execute(&s.config.workdir, req).await?))
}

async fn code_run(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CodeRunRequest>,
) -> Result<Json<crate::charts::CodeRunResponse>, ApiError> {
    Ok(Json(crate::charts::extract(process::code_run(&s.config.workdir, req).await?)))
}

async fn list_files(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<files::FileInfo>>, ApiError> {
    // One level is what the daemon lists; a deeper listing is refused rather than answered flat.
    match q.depth.as_deref().map(str::trim) {
        None | Some("" | "1") => {}
        Some(d) => {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!("depth {d:?} is not supported: the agent lists one level (depth 1)"),
            ));
        }
    }
    Ok(Json(files::list(&s.config.workdir, q.path.as_deref())?))
}

async fn file_info(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Result<Json<files::FileInfo>, ApiError> {
    Ok(Json(files::info(&s.config.workdir, q.path.as_deref())?))
}

async fn download(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Result<Response, ApiError> {
    let (file, len, name) = files::open_download(&s.config.workdir, q.path.as_deref()).await?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let disposition = format!("attachment; filename=\"{}\"", name.replace(['"', '\\', '\r', '\n'], "_"));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn create_folder(State(s): State<AppState>, Query(q): Query<FolderQuery>) -> Result<StatusCode, ApiError> {
    files::create_folder(&s.config.workdir, q.path.as_deref(), q.mode.as_deref())?;
    Ok(StatusCode::CREATED)
}

async fn delete_file(State(s): State<AppState>, Query(q): Query<DeleteQuery>) -> Result<StatusCode, ApiError> {
    let recursive = files::parse_bool(q.recursive.as_deref(), "recursive")?;
    let workdir = s.config.workdir.clone();
    blocking(move || files::delete(&workdir, q.path.as_deref(), recursive)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn move_file(State(s): State<AppState>, Query(q): Query<MoveQuery>) -> Result<StatusCode, ApiError> {
    let workdir = s.config.workdir.clone();
    blocking(move || files::move_path(&workdir, q.source.as_deref(), q.destination.as_deref())).await??;
    Ok(StatusCode::OK)
}

/// Runs filesystem work that may take long (tree walks, copies) off the single-threaded
/// runtime, so other requests keep being served.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("file operation task failed: {e}")))
}

async fn bulk_download(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<crate::download::DownloadRequest>,
) -> Result<Response, ApiError> {
    let d = crate::download::start(&s.config.workdir, req)?;
    Ok(([(header::CONTENT_TYPE, d.content_type())], Body::from_stream(d.into_stream())).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternQuery {
    path: Option<String>,
    pattern: Option<String>,
}

async fn find_in_files(
    State(s): State<AppState>,
    Query(q): Query<PatternQuery>,
) -> Result<Json<Vec<crate::search::Match>>, ApiError> {
    let workdir = s.config.workdir.clone();
    Ok(Json(blocking(move || crate::search::find(&workdir, q.path.as_deref(), q.pattern.as_deref())).await??))
}

async fn search_files(
    State(s): State<AppState>,
    Query(q): Query<PatternQuery>,
) -> Result<Json<crate::search::SearchFilesResponse>, ApiError> {
    let workdir = s.config.workdir.clone();
    Ok(Json(blocking(move || crate::search::search(&workdir, q.path.as_deref(), q.pattern.as_deref())).await??))
}

async fn replace_in_files(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<crate::search::ReplaceRequest>,
) -> Result<Json<Vec<crate::search::ReplaceResult>>, ApiError> {
    let workdir = s.config.workdir.clone();
    Ok(Json(blocking(move || crate::search::replace(&workdir, &req)).await??))
}

async fn set_permissions(State(s): State<AppState>, Query(q): Query<PermissionsQuery>) -> Result<StatusCode, ApiError> {
    let (path, owner, group, mode) = (q.path.as_deref(), q.owner.as_deref(), q.group.as_deref(), q.mode.as_deref());
    files::set_permissions(&s.config.workdir, path, owner, group, mode)?;
    Ok(StatusCode::OK)
}

/// A request body shared between the multipart parser and [`SharedBody::drain`].
#[derive(Clone)]
struct SharedBody(Arc<tokio::sync::Mutex<axum::body::BodyDataStream>>);

impl SharedBody {
    /// The multipart parser reads the body only up to its closing boundary. hyper closes a
    /// connection whose request body was not read to its end, and a client still writing the
    /// last bytes (the epilogue, a final CRLF) then gets EPIPE instead of the answer. So
    /// the rest is read here before answering, up to 1 MiB (beyond that, closing is right).
    async fn drain(&self) {
        use futures_util::StreamExt;
        let mut left: usize = 1 << 20;
        let mut body = self.0.lock().await;
        while let Some(Ok(chunk)) = body.next().await {
            match left.checked_sub(chunk.len()) {
                Some(l) => left = l,
                None => break,
            }
        }
    }
}

/// `Multipart` over `req`'s body, and the handle that drains what the parser leaves.
async fn multipart_drained(req: Request) -> Result<(Multipart, SharedBody), ApiError> {
    use axum::extract::FromRequest;
    let (parts, body) = req.into_parts();
    let shared = SharedBody(Arc::new(tokio::sync::Mutex::new(body.into_data_stream())));
    let stream = futures_util::stream::unfold(shared.clone(), |s| async move {
        let next = {
            use futures_util::StreamExt;
            s.0.lock().await.next().await
        };
        next.map(|item| (item, s))
    });
    let req = Request::from_parts(parts, Body::from_stream(stream));
    let mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("not a multipart body: {}", e.body_text())))?;
    Ok((mp, shared))
}

async fn bulk_upload(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (mp, body) = multipart_drained(req).await?;
    let result = files::bulk_upload(&s.config.workdir, mp).await;
    body.drain().await;
    let result = result?;
    let status = if result.errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    Ok((status, Json(result)).into_response())
}

async fn upload_v2(
    State(s): State<AppState>,
    Query(q): Query<PathQuery>,
    req: Request,
) -> Result<Json<files::UploadedFile>, ApiError> {
    let (mp, body) = multipart_drained(req).await?;
    let result = files::upload_v2(&s.config.workdir, q.path.as_deref(), mp).await;
    body.drain().await;
    Ok(Json(result?))
}

async fn create_session(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateSessionRequest>,
) -> Result<StatusCode, ApiError> {
    s.sessions.create(&req.session_id)?;
    Ok(StatusCode::CREATED)
}

async fn list_sessions(State(s): State<AppState>) -> Json<Vec<SessionDto>> {
    Json(s.sessions.list())
}

async fn get_session(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<SessionDto>, ApiError> {
    Ok(Json(s.sessions.get(&id)?))
}

async fn entrypoint_session(State(s): State<AppState>) -> Result<Json<SessionDto>, ApiError> {
    Ok(Json(s.sessions.get(crate::session::ENTRYPOINT)?))
}

async fn delete_session(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    s.sessions.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn session_exec(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let (body, is_async) = s.sessions.exec(&id, req).await?;
    let status = if is_async { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(body)).into_response())
}

async fn get_command(
    State(s): State<AppState>,
    axum::extract::Path((id, cmd)): axum::extract::Path<(String, String)>,
) -> Result<Json<crate::session::CommandDto>, ApiError> {
    let c = s.sessions.command(&id, &cmd)?;
    Ok(Json(crate::session::CommandDto { id: c.id.clone(), command: c.command.clone(), exit_code: c.log.exit_code() }))
}

async fn command_logs(
    State(s): State<AppState>,
    axum::extract::Path((id, cmd)): axum::extract::Path<(String, String)>,
    Query(q): Query<FollowQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let cmd = s.sessions.command(&id, &cmd)?;
    logs_response(cmd, q, req).await
}

async fn entrypoint_logs(
    State(s): State<AppState>,
    Query(q): Query<FollowQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let cmd = s.sessions.entrypoint()?;
    logs_response(cmd, q, req).await
}

/// JSON logs, or with `follow=true` and an upgrade request, the WebSocket stream.
async fn logs_response(cmd: Arc<SessionCommand>, q: FollowQuery, req: Request) -> Result<Response, ApiError> {
    let follow = q.follow.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("true") || f == "1");
    if follow && req.headers().contains_key(header::UPGRADE) {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("websocket upgrade: {e}")))?;
        return Ok(ws.on_upgrade(move |socket| follow_logs(socket, cmd)));
    }
    let t = cmd.log.text();
    Ok(Json(LogsResponse { output: t.output, stdout: t.stdout, stderr: t.stderr }).into_response())
}

/// Sends what exists, then live chunks, each prefixed by its stream's marker; closes with 1000
/// once the command has ended.
async fn follow_logs(mut socket: WebSocket, cmd: Arc<SessionCommand>) {
    let mut rx = cmd.log.subscribe();
    let mut next = 0u64;
    loop {
        rx.borrow_and_update();
        let (chunks, done) = cmd.log.since(&mut next);
        for (stream, data) in chunks {
            let prefix = if stream == Stream::Stdout { STDOUT_PREFIX } else { STDERR_PREFIX };
            let mut frame = Vec::with_capacity(prefix.len() + data.len());
            frame.extend_from_slice(prefix);
            frame.extend_from_slice(&data);
            if socket.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        if done {
            let close = CloseFrame { code: 1000, reason: "command finished".into() };
            let _ = socket.send(Message::Close(Some(close))).await;
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send_input(
    State(s): State<AppState>,
    axum::extract::Path((id, cmd)): axum::extract::Path<(String, String)>,
    JsonBody(req): JsonBody<InputRequest>,
) -> Result<StatusCode, ApiError> {
    s.sessions.send_input(&id, &cmd, &req.data).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A failed listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be created.
    #[error("create socket directory {path}")]
    SocketDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Binding the unix socket failed.
    #[error("listen on unix socket {path}")]
    BindUnix {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Binding TCP failed.
    #[error("listen on tcp port {port}")]
    BindTcp {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server loop failed.
    #[error("serve")]
    Serve(#[source] std::io::Error),
}

/// The agent's listening sockets, bound before anything else starts (see [`bind`]).
pub struct Listeners {
    unix: tokio::net::UnixListener,
    tcp: Option<tokio::net::TcpListener>,
}

/// Binds the unix socket (0660, replacing a stale one) and, unless `port` is 0, the TCP port.
/// Done before the entrypoint starts: the server waits for this socket to answer, and
/// connections made from here on wait in the backlog until [`serve`] takes them.
pub async fn bind(socket: &Path, port: u16) -> Result<Listeners, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = socket.display().to_string();
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| ServeError::SocketDir { path: dir.display().to_string(), source })?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ServeError::BindUnix { path: shown, source: e });
        }
        _ => {}
    }
    let unix = tokio::net::UnixListener::bind(socket)
        .map_err(|source| ServeError::BindUnix { path: shown.clone(), source })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| ServeError::BindUnix { path: shown.clone(), source })?;
    tracing::info!(socket = %shown, "listening on unix socket");
    let tcp = if port == 0 {
        None
    } else {
        let tcp = tokio::net::TcpListener::bind(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .map_err(|source| ServeError::BindTcp { port, source })?;
        tracing::info!(port, "listening on tcp");
        Some(tcp)
    };
    Ok(Listeners { unix, tcp })
}

/// Serves `router` on the sockets [`bind`] made, until one of them fails.
pub async fn serve(router: Router, listeners: Listeners) -> Result<(), ServeError> {
    let unix = axum::serve(listeners.unix, router.clone());
    let Some(tcp) = listeners.tcp else {
        return unix.await.map_err(ServeError::Serve);
    };
    tokio::select! {
        r = unix => r.map_err(ServeError::Serve),
        r = axum::serve(tcp, router) => r.map_err(ServeError::Serve),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Request as HttpRequest;
    use futures_util::StreamExt;
    use tower::ServiceExt;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        state: AppState,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        Fixture { state: AppState::new(test_config(dir.path())), dir }
    }

    impl Fixture {
        fn work(&self) -> PathBuf {
            self.dir.path().join("work")
        }

        async fn call(&self, req: HttpRequest<Body>) -> (StatusCode, Vec<u8>) {
            let resp = app(self.state.clone()).oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            (status, body.to_vec())
        }

        async fn json(
            &self,
            method: &str,
            uri: &str,
            body: Option<serde_json::Value>,
        ) -> (StatusCode, serde_json::Value) {
            let b = HttpRequest::builder().method(method).uri(uri);
            let req = match body {
                Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())),
                None => b.body(Body::empty()),
            }
            .expect("request");
            let (status, bytes) = self.call(req).await;
            let v = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("json body")
            };
            (status, v)
        }
    }

    fn multipart(boundary: &str, parts: &[(&str, Option<&str>, &str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, filename, content_type, data) in parts {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
            );
            if let Some(f) = filename {
                body.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            body.extend_from_slice(format!("\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    #[tokio::test]
    async fn version_and_directories_are_reported() {
        let f = fixture();
        let (s, v) = f.json("GET", "/version", None).await;
        assert_eq!((s, v["version"].as_str()), (StatusCode::OK, Some(env!("CARGO_PKG_VERSION"))));
        let (_, v) = f.json("GET", "/work-dir", None).await;
        assert_eq!(v["dir"], f.work().display().to_string());
        let (_, v) = f.json("GET", "/user-home-dir", None).await;
        assert_eq!(v["dir"], f.dir.path().display().to_string());
    }

    #[tokio::test]
    async fn execute_answers_combined_output_and_the_exit_code_with_status_200() {
        let f = fixture();
        let body = serde_json::json!({"command": "echo hi; echo err >&2; exit 3"});
        let (s, v) = f.json("POST", "/process/execute", Some(body)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, serde_json::json!({"exitCode": 3, "result": "hi\nerr\n"}));
    }

    /// Calls `uri` and asserts a 400 whose message names `field`.
    async fn assert_refused_naming(f: &Fixture, method: &str, uri: &str, body: Option<serde_json::Value>, field: &str) {
        let (s, v) = f.json(method, uri, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("unknown field `{field}`")), "{method} {uri}: {v}");
    }

    #[tokio::test]
    async fn process_bodies_refuse_an_unknown_key_naming_it() {
        let f = fixture();
        let execute =
            serde_json::json!({"command": "true", "cwd": null, "envs": {"A": "1"}, "timeout": 5, "shell": "zsh"});
        assert_refused_naming(&f, "POST", "/process/execute", Some(execute), "shell").await;
        let code =
            serde_json::json!({"code": "1", "language": "python", "argv": [], "envs": {}, "timeout": 5, "stdin": "x"});
        assert_refused_naming(&f, "POST", "/process/code-run", Some(code), "stdin").await;
        // Everything the SDKs send is still accepted.
        let (s, v) = f
            .json(
                "POST",
                "/process/execute",
                Some(serde_json::json!({"command": "true", "cwd": null, "envs": {"A": "1"}, "timeout": 5})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    #[tokio::test]
    async fn session_bodies_refuse_an_unknown_key_naming_it() {
        let f = fixture();
        assert_refused_naming(
            &f,
            "POST",
            "/process/session",
            Some(serde_json::json!({"sessionId": "s", "shell": "zsh"})),
            "shell",
        )
        .await;
        let (s, _) = f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "s"}))).await;
        assert!(s.is_success(), "{s}");
        let exec = serde_json::json!({"command": "true", "async": false, "runAsync": false, "suppressInputEcho": true, "cwd": "/"});
        assert_refused_naming(&f, "POST", "/process/session/s/exec", Some(exec), "cwd").await;
        let input = serde_json::json!({"data": "x", "newline": false});
        assert_refused_naming(&f, "POST", "/process/session/s/command/c/input", Some(input), "newline").await;
    }

    #[tokio::test]
    async fn file_queries_refuse_an_unknown_key_naming_it() {
        let f = fixture();
        for (method, uri, field) in [
            ("GET", "/files/info?path=a&follow=1", "follow"),
            ("GET", "/files/download?path=a&offset=3", "offset"),
            ("POST", "/files/upload-v2?path=a&overwrite=false", "overwrite"),
            ("POST", "/files/folder?path=a&mode=755&parents=false", "parents"),
            ("DELETE", "/files?path=a&recursive=true&force=true", "force"),
            ("POST", "/files/move?source=a&destination=b&overwrite=true", "overwrite"),
            ("POST", "/files/permissions?path=a&mode=644&recursive=true", "recursive"),
            ("GET", "/files?path=.&hidden=false", "hidden"),
        ] {
            assert_refused_naming(&f, method, uri, None, field).await;
        }
        let (s, v) = f.json("GET", "/files?path=.&depth=1", None).await;
        assert_eq!(s, StatusCode::OK, "depth 1, as the SDKs send it: {v}");
        let (s, v) = f.json("GET", "/files?path=.&depth=2", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("depth")), "{v}");
    }

    #[tokio::test]
    async fn a_json_body_is_accepted_without_a_json_content_type() {
        let f = fixture();
        let req = HttpRequest::post("/process/execute").body(Body::from(r#"{"command":"echo ok"}"#)).expect("request");
        let (s, body) = f.call(req).await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, br#"{"exitCode":0,"result":"ok\n"}"#.as_slice()));
    }

    #[tokio::test]
    async fn an_execute_timeout_answers_408_in_the_error_envelope() {
        let f = fixture();
        let (s, v) =
            f.json("POST", "/process/execute", Some(serde_json::json!({"command": "sleep 20", "timeout": 1}))).await;
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(v["statusCode"], 408);
        assert_eq!(v["path"], "/process/execute");
        assert_eq!(v["source"], "COVE_AGENT");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("timed out")), "{v}");
        assert!(v["timestamp"].is_string());
    }

    #[tokio::test]
    async fn an_empty_command_and_bad_json_answer_400_envelopes() {
        let f = fixture();
        let (s, v) = f.json("POST", "/process/execute", Some(serde_json::json!({"command": ""}))).await;
        assert_eq!((s, v["statusCode"].as_u64()), (StatusCode::BAD_REQUEST, Some(400)));
        let req =
            HttpRequest::post("/process/execute").header("content-type", "application/json").body(Body::from("{"));
        let (s, body) = f.call(req.expect("request")).await;
        assert!(s.is_client_error());
        let v: serde_json::Value = serde_json::from_slice(&body).expect("envelope");
        assert_eq!(v["statusCode"], s.as_u16());
        let (s, v) = f.json("GET", "/no/such/route", None).await;
        assert_eq!((s, v["path"].as_str()), (StatusCode::NOT_FOUND, Some("/no/such/route")));
    }

    #[tokio::test]
    async fn python_style_bulk_upload_with_paths_first_writes_relative_and_nested_destinations() {
        let f = fixture();
        let body = multipart(
            "XyZ",
            &[
                ("files[0].path", None, "text/plain", b"docker-compose.yml"),
                ("files[1].path", None, "text/plain", b"deep/nested/dir/b.json"),
                ("files[2].path", None, "text/plain", b"../outside.txt"),
                ("files[0].file", Some("docker-compose.yml"), "application/octet-stream", b"services: {}\n"),
                ("files[1].file", Some("b.json"), "application/octet-stream", b"{\"b\":1}"),
                ("files[2].file", Some("outside.txt"), "application/octet-stream", b"up"),
            ],
        );
        let req = HttpRequest::post("/files/bulk-upload")
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .header("content-length", body.len())
            .body(Body::from(body))
            .expect("request");
        let (s, bytes) = f.call(req).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["files"][1], serde_json::json!({"path": "deep/nested/dir/b.json", "bytes": 7}));
        assert_eq!(std::fs::read_to_string(f.work().join("docker-compose.yml")).expect("read"), "services: {}\n");
        assert_eq!(std::fs::read_to_string(f.work().join("deep/nested/dir/b.json")).expect("read"), "{\"b\":1}");
        assert_eq!(std::fs::read_to_string(f.dir.path().join("outside.txt")).expect("read"), "up");
    }

    #[tokio::test]
    async fn typescript_style_bulk_upload_interleaved_and_chunked_takes_the_destination_from_the_path_field() {
        let f = fixture();
        let body = multipart(
            "--------------------------123456789012345678901234",
            &[
                ("files[0].path", None, "text/plain", b"conf/app.yaml"),
                ("files[0].file", Some("app.yaml"), "text/yaml", b"a: 1\n"),
                ("files[1].path", None, "text/plain", b"data/sub/b.json"),
                ("files[1].file", Some("b.json"), "application/json", b"[1,2,3]"),
            ],
        );
        // Chunked: small pieces, no Content-Length.
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            body.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let req = HttpRequest::post("/files/bulk-upload")
            .header("content-type", "multipart/form-data; boundary=--------------------------123456789012345678901234")
            .header("transfer-encoding", "chunked")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .expect("request");
        let (s, bytes) = f.call(req).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(std::fs::read_to_string(f.work().join("conf/app.yaml")).expect("read"), "a: 1\n");
        assert_eq!(std::fs::read_to_string(f.work().join("data/sub/b.json")).expect("read"), "[1,2,3]");
        assert!(!f.work().join("app.yaml").exists() && !f.work().join("b.json").exists());
    }

    #[tokio::test]
    async fn a_file_part_before_its_path_is_placed_when_the_path_arrives_and_a_lone_file_is_an_error() {
        let f = fixture();
        let body = multipart(
            "b",
            &[
                ("files[0].file", Some("x"), "application/octet-stream", b"late"),
                ("files[0].path", None, "text/plain", b"late/path.txt"),
                ("files[1].file", Some("y"), "application/octet-stream", b"orphan"),
            ],
        );
        let req = HttpRequest::post("/files/bulk-upload")
            .header("content-type", "multipart/form-data; boundary=b")
            .body(Body::from(body))
            .expect("request");
        let (s, bytes) = f.call(req).await;
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["files"], serde_json::json!([{"path": "late/path.txt", "bytes": 4}]));
        assert!(v["errors"][0].as_str().is_some_and(|e| e.contains("files[1]")), "{v}");
        assert_eq!(std::fs::read_to_string(f.work().join("late/path.txt")).expect("read"), "late");
    }

    #[tokio::test]
    async fn files_can_be_downloaded_listed_described_moved_and_deleted() {
        let f = fixture();
        let (s, _) = f.json("POST", "/files/folder?path=d/e&mode=750", None).await;
        assert_eq!(s, StatusCode::CREATED);
        std::fs::write(f.work().join("d/e/f.txt"), "content").expect("write");

        let req = HttpRequest::get("/files/download?path=d/e/f.txt").body(Body::empty()).expect("request");
        let (s, bytes) = f.call(req).await;
        assert_eq!((s, bytes.as_slice()), (StatusCode::OK, b"content".as_slice()));
        let (s, v) = f.json("GET", "/files/download?path=nope", None).await;
        assert_eq!((s, v["statusCode"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));

        let (s, v) = f.json("GET", "/files?path=d/e", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v[0]["name"], "f.txt");
        assert_eq!(v[0]["size"], 7);
        assert_eq!(v[0]["isDir"], false);
        let (_, v) = f.json("GET", "/files/info?path=d/e", None).await;
        assert_eq!((v["isDir"].as_bool(), v["permissions"].as_str()), (Some(true), Some("0750")));
        assert_eq!(v["mode"], "drwxr-x---");
        for key in ["modTime", "owner", "group"] {
            assert!(v[key].as_str().is_some_and(|s| !s.is_empty()), "{key} in {v}");
        }

        let (s, _) = f.json("POST", "/files/move?source=d/e/f.txt&destination=g.txt", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(f.work().join("g.txt").exists());
        let (s, _) = f.json("DELETE", "/files?path=d", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = f.json("DELETE", "/files?path=d&recursive=true", None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = f.json("DELETE", "/files?path=g.txt", None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(!f.work().join("d").exists() && !f.work().join("g.txt").exists());
    }

    #[tokio::test]
    async fn upload_v2_writes_the_file_part_to_the_query_path() {
        let f = fixture();
        let body = multipart("q", &[("file", Some("blob"), "application/octet-stream", b"v2")]);
        let req = HttpRequest::post("/files/upload-v2?path=up/v2.bin")
            .header("content-type", "multipart/form-data; boundary=q")
            .body(Body::from(body))
            .expect("request");
        let (s, bytes) = f.call(req).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v, serde_json::json!({"name": "v2.bin", "path": "up/v2.bin", "type": "file"}));
        assert_eq!(std::fs::read(f.work().join("up/v2.bin")).expect("read"), b"v2");
    }

    #[tokio::test]
    async fn a_session_keeps_cd_and_exported_variables_between_commands() {
        let f = fixture();
        std::fs::create_dir(f.work().join("sub")).expect("mkdir");
        let (s, _) = f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "s1"}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "s1"}))).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let exec = |cmd: &str| serde_json::json!({"command": cmd});
        let (s, v) = f.json("POST", "/process/session/s1/exec", Some(exec("cd sub && export FOO=bar"))).await;
        assert_eq!((s, v["exitCode"].as_i64()), (StatusCode::OK, Some(0)));
        let (_, v) =
            f.json("POST", "/process/session/s1/exec", Some(exec("pwd; echo $FOO; echo oops >&2; false"))).await;
        assert_eq!(v["stdout"], format!("{}\nbar\n", f.work().join("sub").display()));
        assert_eq!(v["stderr"], "oops\n");
        assert_eq!(v["output"], format!("{}\nbar\noops\n", f.work().join("sub").display()));
        assert_eq!(v["exitCode"], 1);
        // A syntax error fails the command, not the session.
        let (_, v) = f.json("POST", "/process/session/s1/exec", Some(exec("if then fi ("))).await;
        assert_ne!(v["exitCode"], 0);
        let (_, v) = f.json("POST", "/process/session/s1/exec", Some(exec("printf '%s' \"$FOO\""))).await;
        assert_eq!((v["stdout"].as_str(), v["exitCode"].as_i64()), (Some("bar"), Some(0)));

        let cmd_id = v["cmdId"].as_str().expect("cmdId").to_string();
        let (_, v) = f.json("GET", &format!("/process/session/s1/command/{cmd_id}"), None).await;
        assert_eq!(v, serde_json::json!({"id": cmd_id, "command": "printf '%s' \"$FOO\"", "exitCode": 0}));
        let (_, v) = f.json("GET", "/process/session/s1", None).await;
        assert_eq!((v["sessionId"].as_str(), v["commands"].as_array().map(Vec::len)), (Some("s1"), Some(4)));
        let (_, v) = f.json("GET", "/process/session", None).await;
        assert_eq!(v[0]["sessionId"], "s1");
        let (s, _) = f.json("DELETE", "/process/session/s1", None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = f.json("GET", "/process/session/s1", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn async_exec_answers_at_once_and_its_logs_grow_until_it_finishes() {
        let f = fixture();
        f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "a"}))).await;
        let started = std::time::Instant::now();
        let cmd = "echo tick1; sleep 1; echo tick2 >&2; sleep 1; echo tick3";
        let (s, v) =
            f.json("POST", "/process/session/a/exec", Some(serde_json::json!({"command": cmd, "async": true}))).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert!(started.elapsed() < Duration::from_millis(800));
        let id = v["cmdId"].as_str().expect("cmdId").to_string();
        let logs = format!("/process/session/a/command/{id}/logs");
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (s, v) = f.json("GET", &logs, None).await;
            assert_eq!(s, StatusCode::OK);
            for k in ["output", "stdout", "stderr"] {
                assert!(v[k].is_string(), "{k} missing in {v}");
            }
            let output = v["output"].as_str().unwrap_or_default().to_string();
            if seen.last() != Some(&output) {
                seen.push(output);
            }
            let (_, c) = f.json("GET", &format!("/process/session/a/command/{id}"), None).await;
            if c["exitCode"] == 0 {
                assert_eq!(v["stdout"], "tick1\ntick3\n");
                assert_eq!(v["stderr"], "tick2\n");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "command never finished: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen.iter().any(|o| o == "tick1\n"), "{seen:?}");
        assert!(seen.iter().any(|o| o == "tick1\ntick2\n"), "{seen:?}");
        // runAsync works the same way.
        let (s, _) = f
            .json("POST", "/process/session/a/exec", Some(serde_json::json!({"command": "true", "runAsync": true})))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn input_reaches_a_running_command_and_is_echoed_unless_suppressed() {
        let f = fixture();
        f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "i"}))).await;
        for (suppress, expected) in [(false, "hello\ngot hello\n"), (true, "got hello\n")] {
            let body =
                serde_json::json!({"command": "read x; echo got $x", "runAsync": true, "suppressInputEcho": suppress});
            let (_, v) = f.json("POST", "/process/session/i/exec", Some(body)).await;
            let id = v["cmdId"].as_str().expect("cmdId").to_string();
            let (s, _) = f
                .json(
                    "POST",
                    &format!("/process/session/i/command/{id}/input"),
                    Some(serde_json::json!({"data": "hello\n"})),
                )
                .await;
            assert_eq!(s, StatusCode::NO_CONTENT);
            let cmd = f.state.sessions.command("i", &id).expect("command");
            assert_eq!(tokio::time::timeout(Duration::from_secs(5), cmd.log.wait()).await.expect("finishes"), 0);
            assert_eq!(cmd.log.text().stdout, expected);
            let (s, _) = f
                .json("POST", &format!("/process/session/i/command/{id}/input"), Some(serde_json::json!({"data": "x"})))
                .await;
            assert_eq!(s, StatusCode::GONE);
        }
    }

    #[tokio::test]
    async fn the_follow_websocket_carries_prefixed_frames_and_closes_with_1000_at_the_end() {
        let f = fixture();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(axum::serve(listener, app(f.state.clone())).into_future());
        f.json("POST", "/process/session", Some(serde_json::json!({"sessionId": "w"}))).await;
        let cmd = "echo out1; echo err1 >&2; sleep 1; echo out2";
        let (_, v) =
            f.json("POST", "/process/session/w/exec", Some(serde_json::json!({"command": cmd, "async": true}))).await;
        let id = v["cmdId"].as_str().expect("cmdId");
        let url = format!("ws://{addr}/process/session/w/command/{id}/logs?follow=true");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
        let (mut out, mut err, mut close) = (Vec::new(), Vec::new(), None);
        let collect = async {
            while let Some(msg) = ws.next().await {
                match msg.expect("frame") {
                    tokio_tungstenite::tungstenite::Message::Binary(b) => {
                        if let Some(rest) = b.strip_prefix(STDOUT_PREFIX) {
                            out.extend_from_slice(rest);
                        } else if let Some(rest) = b.strip_prefix(STDERR_PREFIX) {
                            err.extend_from_slice(rest);
                        } else {
                            panic!("frame without a stream prefix: {b:?}");
                        }
                    }
                    tokio_tungstenite::tungstenite::Message::Close(c) => {
                        close = c.map(|c| u16::from(c.code));
                        break;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect).await.expect("stream ends");
        let _ = ws.close(None).await;
        assert_eq!(String::from_utf8_lossy(&out), "out1\nout2\n");
        assert_eq!(String::from_utf8_lossy(&err), "err1\n");
        assert_eq!(close, Some(1000));
    }

    #[tokio::test]
    async fn the_entrypoint_is_served_as_a_read_only_session() {
        let f = fixture();
        let (s, _) = f.json("GET", "/process/session/entrypoint", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        f.state.sessions.start_entrypoint(&["sh".into(), "-c".into(), "echo booted; echo warn >&2".into()]);
        let ep = f.state.sessions.entrypoint().expect("entrypoint");
        tokio::time::timeout(Duration::from_secs(5), ep.log.wait()).await.expect("exits");
        let (s, v) = f.json("GET", "/process/session/entrypoint/logs", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!((v["stdout"].as_str(), v["stderr"].as_str()), (Some("booted\n"), Some("warn\n")));
        let (_, v) = f.json("GET", "/process/session/entrypoint", None).await;
        assert_eq!(v["commands"][0]["exitCode"], 0);
        assert_eq!(v["commands"][0]["command"], "sh -c echo booted; echo warn >&2");
        let id = v["commands"][0]["id"].as_str().expect("id").to_string();
        let (s, _) = f.json("GET", &format!("/process/session/entrypoint/command/{id}/logs"), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) =
            f.json("POST", "/process/session/entrypoint/exec", Some(serde_json::json!({"command": "true"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn code_run_runs_python_through_the_router_when_python3_is_installed() {
        if crate::process::which("python3", std::env::var_os("PATH").as_deref()).is_none() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let f = fixture();
        let body = serde_json::json!({"code": "import os\nprint(os.getcwd())", "language": "python"});
        let (s, v) = f.json("POST", "/process/code-run", Some(body)).await;
        assert_eq!(s, StatusCode::OK);
        let expected = serde_json::json!({"exitCode": 0, "result": format!("{}\n", f.work().display()), "artifacts": {"charts": []}});
        assert_eq!(v, expected);
    }
}
