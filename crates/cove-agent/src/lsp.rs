//! Language servers for the SDKs' `create_lsp_server`: the agent starts the one the image has
//! and speaks JSON-RPC (LSP base protocol, `Content-Length` framing) over its stdio.
//!
//! Contract:
//! - `POST /lsp/start` `{languageId, pathToProject}` starts one server per (language, project):
//!   Python: `pylsp`, else `pyright-langserver --stdio`, else `jedi-language-server`;
//!   TypeScript/JavaScript: `typescript-language-server --stdio`. None on PATH is a 400 naming
//!   what to install. Starting a running one is a no-op; `POST /lsp/stop` shuts it down
//!   (shutdown + exit, then its process group is killed).
//! - `POST /lsp/did-open` / `did-close` `{languageId, pathToProject, uri}`: the agent reads the
//!   file (`file://` + an absolute path, or one relative to the project) and sends its text.
//!   `completions` and `document-symbols` open the file if needed and resend it when it changed
//!   on disk, so they always see the current contents.
//! - `POST /lsp/completions` → `CompletionList` `{isIncomplete, items}`; `GET
//!   /lsp/document-symbols` and `GET /lsp/workspacesymbols` → `[{name, kind, location{uri,
//!   range}}]` (hierarchical symbols flattened). A server without `workspace/symbol` (pylsp) is
//!   answered from the document symbols of the project's files (at most [`MAX_SCAN_FILES`]).
//! - Requests to a server that is not started are 404; one that does not answer within
//!   [`REQUEST_TIMEOUT`] is 408; a server that exited is forgotten (start it again).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::error::{ApiError, ErrorKind};
use crate::process::{prepare, resolve, which};
use crate::sys;

/// How long a request may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Files whose symbols a workspace-symbol fallback reads, at most.
pub const MAX_SCAN_FILES: usize = 300;
/// Largest message accepted from a server.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// `LspServerRequest`: start and stop.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerRequest {
    /// `python`, `typescript` or `javascript`.
    pub language_id: String,
    /// The project root.
    pub path_to_project: String,
}

/// `LspDocumentRequest`: did-open and did-close (and document-symbols' query).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentRequest {
    /// As in [`ServerRequest`].
    pub language_id: String,
    /// As in [`ServerRequest`].
    pub path_to_project: String,
    /// `file://<path>`.
    pub uri: String,
}

/// `LspCompletionParams`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompletionRequest {
    /// As in [`ServerRequest`].
    pub language_id: String,
    /// As in [`ServerRequest`].
    pub path_to_project: String,
    /// `file://<path>`.
    pub uri: String,
    /// Zero-based `{line, character}`.
    pub position: Position,
    /// `{triggerKind, triggerCharacter?}`, passed on.
    pub context: Option<CompletionContext>,
}

/// `LspPosition`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Zero-based line.
    pub line: u32,
    /// Zero-based UTF-16 column.
    pub character: u32,
}

/// `CompletionContext`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompletionContext {
    /// 1 invoked, 2 trigger character, 3 incomplete.
    pub trigger_kind: i64,
    /// The character typed.
    pub trigger_character: Option<String>,
}

/// `GET /lsp/workspacesymbols` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSymbolsQuery {
    /// Matched against symbol names.
    pub query: Option<String>,
    /// As in [`ServerRequest`].
    pub language_id: String,
    /// As in [`ServerRequest`].
    pub path_to_project: String,
}

/// A failed LSP operation.
#[derive(Debug, thiserror::Error)]
pub enum LspError {
    /// Not python, typescript or javascript.
    #[error("unsupported languageId {language:?}: use python, typescript or javascript")]
    UnsupportedLanguage {
        /// As sent.
        language: String,
    },
    /// No language server for the language on PATH.
    #[error("no {language} language server is installed in this sandbox: {install}")]
    NoServer {
        /// The language.
        language: &'static str,
        /// What to install.
        install: &'static str,
    },
    /// The project path is not a directory.
    #[error("pathToProject {path} is not a directory")]
    BadProject {
        /// Resolved.
        path: String,
    },
    /// A uri that is not `file://…`.
    #[error("uri {uri:?} is not a file:// uri")]
    BadUri {
        /// As sent.
        uri: String,
    },
    /// No server for (language, project).
    #[error("no {language} language server is running for {project}: call start first")]
    NotStarted {
        /// The language.
        language: &'static str,
        /// The project.
        project: String,
    },
    /// A document could not be read.
    #[error("read {path}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be started.
    #[error("start language server {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server went away.
    #[error("the {language} language server for {project} exited{detail}")]
    Exited {
        /// The language.
        language: &'static str,
        /// The project.
        project: String,
        /// `: ` and the end of its stderr, or empty.
        detail: String,
    },
    /// No answer in time.
    #[error("the language server did not answer {method} within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The request.
        method: String,
    },
    /// The server answered with an error.
    #[error("the language server refused {method}: {message}")]
    Rpc {
        /// The request.
        method: String,
        /// Its message.
        message: String,
    },
}

impl LspError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LspError::UnsupportedLanguage { .. }
            | LspError::NoServer { .. }
            | LspError::BadProject { .. }
            | LspError::BadUri { .. } => ErrorKind::InvalidArgument,
            LspError::NotStarted { .. } => ErrorKind::NotFound,
            LspError::ReadFile { source, .. } => ErrorKind::from_io(source.kind()),
            LspError::Timeout { .. } => ErrorKind::Timeout,
            LspError::Exited { .. } => ErrorKind::Gone,
            LspError::Spawn { .. } | LspError::Rpc { .. } => ErrorKind::Internal,
        }
    }
}

/// The languages, by which server they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lang {
    Python,
    TypeScript,
}

impl Lang {
    fn parse(id: &str) -> Result<Lang, LspError> {
        match id.to_ascii_lowercase().as_str() {
            "python" => Ok(Lang::Python),
            "typescript" | "javascript" => Ok(Lang::TypeScript),
            _ => Err(LspError::UnsupportedLanguage { language: id.to_string() }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::TypeScript => "typescript",
        }
    }

    /// Candidate servers in order of preference.
    fn servers(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Lang::Python => &[("pylsp", &[]), ("pyright-langserver", &["--stdio"]), ("jedi-language-server", &[])],
            Lang::TypeScript => &[("typescript-language-server", &["--stdio"])],
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Lang::Python => {
                "install python3-pylsp (apt-get install python3-pylsp, or pip install python-lsp-server) or pyright"
            }
            Lang::TypeScript => {
                "install typescript-language-server and typescript (npm install -g typescript-language-server typescript)"
            }
        }
    }

    /// `initializationOptions` of its `initialize`. typescript-language-server answers from a
    /// syntax-only tsserver while the full one loads the project (`useSyntaxServer: auto`), so
    /// completions asked right after did-open miss everything imported (a member list of an
    /// imported class is empty): "never" runs the full server alone, and requests wait for it.
    fn initialization_options(self) -> Value {
        match self {
            Lang::Python => Value::Null,
            Lang::TypeScript => json!({"tsserver": {"useSyntaxServer": "never"}}),
        }
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Lang::Python => &["py", "pyi"],
            Lang::TypeScript => &["ts", "tsx", "js", "jsx", "mts", "cts", "mjs", "cjs"],
        }
    }

    /// The `languageId` of a document at `path`.
    fn document_language(self, path: &Path) -> &'static str {
        match (self, path.extension().and_then(|e| e.to_str()).unwrap_or("")) {
            (Lang::Python, _) => "python",
            (Lang::TypeScript, "tsx") => "typescriptreact",
            (Lang::TypeScript, "jsx") => "javascriptreact",
            (Lang::TypeScript, "js" | "mjs" | "cjs") => "javascript",
            (Lang::TypeScript, _) => "typescript",
        }
    }
}

type Pending = Mutex<HashMap<i64, oneshot::Sender<Result<Value, String>>>>;

/// One running language server.
#[derive(Debug)]
struct Server {
    lang: Lang,
    project: PathBuf,
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Arc<Pending>,
    next_id: AtomicI64,
    alive: Arc<AtomicBool>,
    stderr_tail: Arc<Mutex<String>>,
    capabilities: Mutex<Value>,
    /// Open documents: uri → (version, text).
    docs: tokio::sync::Mutex<HashMap<String, (i64, String)>>,
    pgid: u32,
    _child: Mutex<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        sys::kill_group(self.pgid, libc::SIGKILL);
    }
}

/// All language servers of the agent.
#[derive(Debug)]
pub struct LspManager {
    workdir: PathBuf,
    servers: Mutex<HashMap<(Lang, PathBuf), Arc<Server>>>,
}

impl LspManager {
    /// Servers whose relative project paths resolve against `workdir`.
    pub fn new(workdir: PathBuf) -> Self {
        LspManager { workdir, servers: Mutex::default() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(Lang, PathBuf), Arc<Server>>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, language_id: &str, project: &str) -> Result<(Lang, PathBuf), LspError> {
        let lang = Lang::parse(language_id)?;
        Ok((lang, resolve(&self.workdir, Some(project).filter(|p| !p.is_empty()))))
    }

    fn running(&self, language_id: &str, project: &str) -> Result<Arc<Server>, LspError> {
        let key = self.key(language_id, project)?;
        let server = self.map().get(&key).cloned();
        match server {
            Some(s) if s.alive.load(Ordering::SeqCst) => Ok(s),
            Some(s) => {
                self.map().remove(&key);
                Err(s.exited())
            }
            None => Err(LspError::NotStarted { language: key.0.name(), project: key.1.display().to_string() }),
        }
    }

    /// Starts the server for (language, project) unless it runs.
    pub async fn start(&self, req: ServerRequest) -> Result<(), LspError> {
        let key = self.key(&req.language_id, &req.path_to_project)?;
        if self.map().get(&key).is_some_and(|s| s.alive.load(Ordering::SeqCst)) {
            return Ok(());
        }
        if !key.1.is_dir() {
            return Err(LspError::BadProject { path: key.1.display().to_string() });
        }
        let server = Server::spawn(key.0, key.1.clone()).await?;
        if let Err(e) = server.initialize().await {
            drop(server);
            return Err(e);
        }
        self.map().insert(key, server);
        Ok(())
    }

    /// Shuts the server down.
    pub async fn stop(&self, req: ServerRequest) -> Result<(), LspError> {
        let key = self.key(&req.language_id, &req.path_to_project)?;
        let server = self.map().remove(&key);
        let Some(server) = server else {
            return Err(LspError::NotStarted { language: key.0.name(), project: key.1.display().to_string() });
        };
        if server.alive.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(5), server.request("shutdown", Value::Null)).await;
            let _ = server.notify("exit", Value::Null).await;
        }
        tracing::info!(language = key.0.name(), project = %key.1.display(), "language server stopped");
        Ok(())
    }

    /// Sends the document's text (`textDocument/didOpen`, or `didChange` when open).
    pub async fn did_open(&self, req: DocumentRequest) -> Result<(), LspError> {
        let server = self.running(&req.language_id, &req.path_to_project)?;
        server.sync(&req.uri).await.map(|_| ())
    }

    /// `textDocument/didClose`; closing a document that is not open does nothing.
    pub async fn did_close(&self, req: DocumentRequest) -> Result<(), LspError> {
        let server = self.running(&req.language_id, &req.path_to_project)?;
        let (uri, _) = server.document(&req.uri)?;
        if server.docs.lock().await.remove(&uri).is_some() {
            server.notify("textDocument/didClose", json!({"textDocument": {"uri": uri}})).await?;
        }
        Ok(())
    }

    /// `textDocument/completion` as a `CompletionList`.
    pub async fn completions(&self, req: CompletionRequest) -> Result<Value, LspError> {
        let server = self.running(&req.language_id, &req.path_to_project)?;
        let uri = server.sync(&req.uri).await?;
        let context = match &req.context {
            Some(c) => json!({"triggerKind": c.trigger_kind, "triggerCharacter": c.trigger_character}),
            None => json!({"triggerKind": 1}),
        };
        let params = json!({
            "textDocument": {"uri": uri},
            "position": {"line": req.position.line, "character": req.position.character},
            "context": context,
        });
        Ok(completion_list(server.request("textDocument/completion", params).await?))
    }

    /// The document's symbols, flattened.
    pub async fn document_symbols(&self, req: DocumentRequest) -> Result<Vec<Value>, LspError> {
        let server = self.running(&req.language_id, &req.path_to_project)?;
        let uri = server.sync(&req.uri).await?;
        server.symbols_of(&uri).await
    }

    /// Symbols of the project whose names contain `query` (case-insensitive).
    pub async fn workspace_symbols(&self, q: WorkspaceSymbolsQuery) -> Result<Vec<Value>, LspError> {
        let server = self.running(&q.language_id, &q.path_to_project)?;
        let query = q.query.unwrap_or_default();
        let provider = server.capabilities.lock().unwrap_or_else(|e| e.into_inner())["workspaceSymbolProvider"].clone();
        if !provider.is_null() && provider != Value::Bool(false) {
            let found = server.request("workspace/symbol", json!({"query": query})).await?;
            return Ok(found.as_array().map(|a| a.iter().filter_map(symbol_information).collect()).unwrap_or_default());
        }
        // No workspace/symbol (pylsp): the document symbols of the project's files.
        let needle = query.to_lowercase();
        let mut out = Vec::new();
        for path in project_files(&server.project, server.lang.extensions(), MAX_SCAN_FILES) {
            let file_uri = file_uri(&path);
            let was_open = server.docs.lock().await.contains_key(&file_uri);
            if server.sync(&file_uri).await.is_err() {
                continue;
            }
            let symbols = server.symbols_of(&file_uri).await;
            if !was_open && server.docs.lock().await.remove(&file_uri).is_some() {
                server.notify("textDocument/didClose", json!({"textDocument": {"uri": file_uri}})).await?;
            }
            out.extend(symbols?.into_iter().filter(|s| {
                s["name"].as_str().is_some_and(|n| needle.is_empty() || n.to_lowercase().contains(&needle))
            }));
        }
        Ok(out)
    }
}

impl Server {
    async fn spawn(lang: Lang, project: PathBuf) -> Result<Arc<Server>, LspError> {
        let path_var = std::env::var_os("PATH");
        let (program, args) = lang
            .servers()
            .iter()
            .find_map(|(name, args)| which(name, path_var.as_deref()).map(|p| (p, *args)))
            .ok_or(LspError::NoServer { language: lang.name(), install: lang.install_hint() })?;
        let mut cmd = Command::new(&program);
        cmd.args(args);
        prepare(&mut cmd, &project, None);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| LspError::Spawn { program: program.display().to_string(), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn_err(std::io::Error::other("missing stdio pipe")));
        };
        let pgid = child.id().unwrap_or(0);
        tracing::info!(language = lang.name(), program = %program.display(), project = %project.display(), pgid, "language server started");
        let server = Arc::new(Server {
            lang,
            project,
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Arc::default(),
            next_id: AtomicI64::new(1),
            alive: Arc::new(AtomicBool::new(true)),
            stderr_tail: Arc::default(),
            capabilities: Mutex::new(Value::Null),
            docs: tokio::sync::Mutex::default(),
            pgid,
            _child: Mutex::new(child),
        });
        tokio::spawn(keep_tail(stderr, server.stderr_tail.clone()));
        // The reader holds only what it needs, so dropping the last `Server` kills the process.
        let (pending, alive) = (server.pending.clone(), server.alive.clone());
        let (reply_tx, mut reply_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        tokio::spawn(read_messages(stdout, pending, alive, reply_tx));
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Some(msg) = reply_rx.recv().await {
                let Some(server) = weak.upgrade() else { break };
                let _ = server.write(&msg).await;
            }
        });
        Ok(server)
    }

    async fn initialize(&self) -> Result<(), LspError> {
        let root = file_uri(&self.project);
        let name = self.project.file_name().map_or("project".into(), |n| n.to_string_lossy().into_owned());
        let mut params = json!({
            "processId": std::process::id(),
            "clientInfo": {"name": "cove-agent", "version": env!("CARGO_PKG_VERSION")},
            "rootPath": self.project.display().to_string(),
            "rootUri": root,
            "workspaceFolders": [{"uri": root, "name": name}],
            "capabilities": {
                "textDocument": {
                    "synchronization": {"dynamicRegistration": false},
                    "completion": {"completionItem": {"snippetSupport": false, "documentationFormat": ["plaintext", "markdown"]}, "contextSupport": true},
                    "documentSymbol": {"hierarchicalDocumentSymbolSupport": true},
                },
                "workspace": {"symbol": {}, "workspaceFolders": true, "configuration": true},
            },
        });
        let options = self.lang.initialization_options();
        if !options.is_null() {
            params["initializationOptions"] = options;
        }
        let result = self.request("initialize", params).await?;
        *self.capabilities.lock().unwrap_or_else(|e| e.into_inner()) = result["capabilities"].clone();
        self.notify("initialized", json!({})).await
    }

    fn exited(&self) -> LspError {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner()).trim().to_string();
        let detail = if tail.is_empty() { String::new() } else { format!(": {tail}") };
        LspError::Exited { language: self.lang.name(), project: self.project.display().to_string(), detail }
    }

    async fn write(&self, msg: &Value) -> Result<(), LspError> {
        let body = msg.to_string();
        let mut stdin = self.stdin.lock().await;
        let framed = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        stdin.write_all(framed.as_bytes()).await.map_err(|_| self.exited())?;
        stdin.flush().await.map_err(|_| self.exited())
    }

    async fn notify(&self, method: &str, params: Value) -> Result<(), LspError> {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params})).await
    }

    async fn request(&self, method: &str, params: Value) -> Result<Value, LspError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(self.exited());
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let sent = self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        if let Err(e) = sent {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        match answer {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(message))) => Err(LspError::Rpc { method: method.to_string(), message }),
            Ok(Err(_)) => Err(self.exited()),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(LspError::Timeout { method: method.to_string() })
            }
        }
    }

    /// The uri the server knows the document by, and its path.
    fn document(&self, uri: &str) -> Result<(String, PathBuf), LspError> {
        let raw = uri.strip_prefix("file://").ok_or_else(|| LspError::BadUri { uri: uri.to_string() })?;
        // The SDKs send `file://` + the path as it is; other clients send proper (encoded) URIs.
        let absolute = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { self.project.join(p) };
        let mut path = absolute(raw);
        if !path.exists() && raw.contains('%') {
            path = absolute(&percent_decode(raw));
        }
        Ok((file_uri(&path), path))
    }

    /// Makes the server's copy of the document the file's current text; returns its uri.
    async fn sync(&self, uri: &str) -> Result<String, LspError> {
        let (uri, path) = self.document(uri)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|source| LspError::ReadFile { path: path.display().to_string(), source })?;
        let mut docs = self.docs.lock().await;
        match docs.get_mut(&uri) {
            Some((_, old)) if *old == text => {}
            Some((version, old)) => {
                *version += 1;
                *old = text.clone();
                let params =
                    json!({"textDocument": {"uri": uri, "version": *version}, "contentChanges": [{"text": text}]});
                self.notify("textDocument/didChange", params).await?;
            }
            None => {
                let language = self.lang.document_language(&path);
                let params = json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}});
                self.notify("textDocument/didOpen", params).await?;
                docs.insert(uri.clone(), (1, text));
            }
        }
        Ok(uri)
    }

    async fn symbols_of(&self, uri: &str) -> Result<Vec<Value>, LspError> {
        let found = self.request("textDocument/documentSymbol", json!({"textDocument": {"uri": uri}})).await?;
        let mut out = Vec::new();
        for item in found.as_array().into_iter().flatten() {
            flatten_symbol(item, uri, &mut out);
        }
        Ok(out)
    }
}

/// Reads framed messages: answers go to their waiting request, requests from the server get a
/// reply (`workspace/configuration`: one `null` per item; others `null`), notifications are
/// dropped. At the end every waiting request learns the server exited.
async fn read_messages(
    stdout: ChildStdout,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    replies: tokio::sync::mpsc::UnboundedSender<Value>,
) {
    let mut reader = BufReader::new(stdout);
    while let Some(msg) = read_message(&mut reader).await {
        let id = msg.get("id").cloned();
        match (msg.get("method").and_then(Value::as_str), id) {
            (Some(method), Some(id)) => {
                let result = if method == "workspace/configuration" {
                    let n = msg["params"]["items"].as_array().map_or(0, Vec::len);
                    Value::Array(vec![Value::Null; n])
                } else {
                    Value::Null
                };
                let _ = replies.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
            }
            (Some(_), None) => {}
            (None, Some(id)) => {
                let Some(id) = id.as_i64() else { continue };
                let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(tx) = waiter {
                    let answer = match msg.get("error") {
                        Some(e) => Err(e["message"].as_str().unwrap_or("error").to_string()),
                        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = tx.send(answer);
                }
            }
            (None, None) => {}
        }
    }
    alive.store(false, Ordering::SeqCst);
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// One `Content-Length`-framed JSON message; `None` at the end or on a broken frame.
async fn read_message(reader: &mut BufReader<ChildStdout>) -> Option<Value> {
    loop {
        let mut len = None;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let len = len.filter(|&n| n <= MAX_MESSAGE)?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.ok()?;
        if let Ok(v) = serde_json::from_slice(&body) {
            return Some(v);
        }
    }
}

/// Keeps the last 2 KiB of the server's stderr for error messages.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<String>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        t.push_str(&String::from_utf8_lossy(&buf[..n]));
        if t.len() > 2048 {
            let mut cut = t.len() - 2048;
            while !t.is_char_boundary(cut) {
                cut += 1;
            }
            t.drain(..cut);
        }
    }
}

/// `CompletionItem[] | CompletionList | null` → `{isIncomplete, items}` with the fields the
/// SDKs read (`documentation` always an object).
fn completion_list(result: Value) -> Value {
    let (incomplete, items) = match &result {
        Value::Array(items) => (false, items.clone()),
        Value::Object(o) => (
            o.get("isIncomplete").and_then(Value::as_bool).unwrap_or(false),
            o.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
        ),
        _ => (false, Vec::new()),
    };
    let items: Vec<Value> = items
        .into_iter()
        .filter(|i| i["label"].is_string())
        .map(|i| {
            let mut out = serde_json::Map::new();
            out.insert("label".into(), i["label"].clone());
            for key in ["kind", "detail", "sortText", "filterText", "insertText"] {
                if let Some(v) = i.get(key).filter(|v| !v.is_null()) {
                    out.insert(key.into(), v.clone());
                }
            }
            match i.get("documentation") {
                Some(Value::String(s)) => {
                    out.insert("documentation".into(), json!({"kind": "plaintext", "value": s}));
                }
                Some(d @ Value::Object(_)) => {
                    out.insert("documentation".into(), d.clone());
                }
                _ => {}
            }
            Value::Object(out)
        })
        .collect();
    json!({"isIncomplete": incomplete, "items": items})
}

/// `DocumentSymbol` (with children) or `SymbolInformation` → `LspSymbol`s.
fn flatten_symbol(item: &Value, uri: &str, out: &mut Vec<Value>) {
    if item.get("location").is_some() {
        out.extend(symbol_information(item));
        return;
    }
    let (Some(name), Some(kind)) = (item["name"].as_str(), item["kind"].as_i64()) else { return };
    out.push(json!({"name": name, "kind": kind, "location": {"uri": uri, "range": item["range"]}}));
    for child in item["children"].as_array().into_iter().flatten() {
        flatten_symbol(child, uri, out);
    }
}

/// `SymbolInformation` / `WorkspaceSymbol` → `LspSymbol` (a location without a range gets 0:0).
fn symbol_information(item: &Value) -> Option<Value> {
    let name = item["name"].as_str()?;
    let kind = item["kind"].as_i64()?;
    let uri = item["location"]["uri"].as_str()?;
    let zero = json!({"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}});
    let range = Some(&item["location"]["range"]).filter(|r| r.is_object()).cloned().unwrap_or(zero);
    Some(json!({"name": name, "kind": kind, "location": {"uri": uri, "range": range}}))
}

/// Files under `root` with one of `exts`, skipping hidden directories and dependency trees.
fn project_files(root: &Path, exts: &[&str], max: usize) -> Vec<PathBuf> {
    const SKIP: [&str; 5] = ["node_modules", "__pycache__", "site-packages", "venv", "dist"];
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if depth < 12 && !name.starts_with('.') && !SKIP.contains(&name.as_str()) {
                    stack.push((e.path(), depth + 1));
                }
            } else if ft.is_file() && Path::new(&name).extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
                out.push(e.path());
                if out.len() >= max {
                    return out;
                }
            }
        }
    }
    out
}

/// `file://` + the path, percent-encoding what a URI path may not hold.
fn file_uri(path: &Path) -> String {
    let mut s = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl From<LspError> for ApiError {
    fn from(e: LspError) -> Self {
        ApiError::new(e.kind(), crate::error::chain(&e))
    }
}

/// The LSP routes, over projects whose relative paths resolve against `workdir`.
pub fn routes<S: Clone + Send + Sync + 'static>(workdir: &Path) -> Router<S> {
    Router::new()
        .route("/lsp/start", post(start))
        .route("/lsp/stop", post(stop))
        .route("/lsp/did-open", post(did_open))
        .route("/lsp/did-close", post(did_close))
        .route("/lsp/completions", post(completions))
        .route("/lsp/document-symbols", get(document_symbols))
        .route("/lsp/workspacesymbols", get(workspace_symbols))
        .with_state(Arc::new(LspManager::new(workdir.to_path_buf())))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("invalid JSON body: {e}")))
}

async fn start(State(m): State<Arc<LspManager>>, b: Bytes) -> Result<StatusCode, ApiError> {
    m.start(body(&b)?).await?;
    Ok(StatusCode::OK)
}

async fn stop(State(m): State<Arc<LspManager>>, b: Bytes) -> Result<StatusCode, ApiError> {
    m.stop(body(&b)?).await?;
    Ok(StatusCode::OK)
}

async fn did_open(State(m): State<Arc<LspManager>>, b: Bytes) -> Result<StatusCode, ApiError> {
    m.did_open(body(&b)?).await?;
    Ok(StatusCode::OK)
}

async fn did_close(State(m): State<Arc<LspManager>>, b: Bytes) -> Result<StatusCode, ApiError> {
    m.did_close(body(&b)?).await?;
    Ok(StatusCode::OK)
}

async fn completions(State(m): State<Arc<LspManager>>, b: Bytes) -> Result<Json<Value>, ApiError> {
    Ok(Json(m.completions(body(&b)?).await?))
}

async fn document_symbols(
    State(m): State<Arc<LspManager>>,
    Query(q): Query<DocumentRequest>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(m.document_symbols(q).await?))
}

async fn workspace_symbols(
    State(m): State<Arc<LspManager>>,
    Query(q): Query<WorkspaceSymbolsQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(m.workspace_symbols(q).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_results_of_every_shape_become_a_completion_list() {
        let items = json!([{"label": "alpha", "kind": 3, "documentation": "doc", "textEdit": {}}, {"nolabel": 1}]);
        let list = completion_list(items);
        assert_eq!(
            list,
            json!({"isIncomplete": false, "items": [{"label": "alpha", "kind": 3, "documentation": {"kind": "plaintext", "value": "doc"}}]})
        );
        let list = completion_list(json!({"isIncomplete": true, "items": [{"label": "b", "detail": "d"}]}));
        assert_eq!(list, json!({"isIncomplete": true, "items": [{"label": "b", "detail": "d"}]}));
        assert_eq!(completion_list(Value::Null), json!({"isIncomplete": false, "items": []}));
    }

    #[test]
    fn hierarchical_symbols_are_flattened_with_the_document_uri() {
        let range = json!({"start": {"line": 1, "character": 0}, "end": {"line": 3, "character": 1}});
        let tree = json!({"name": "C", "kind": 5, "range": range, "selectionRange": range,
                          "children": [{"name": "m", "kind": 6, "range": range, "selectionRange": range}]});
        let mut out = Vec::new();
        flatten_symbol(&tree, "file:///p/a.py", &mut out);
        let names: Vec<_> = out.iter().map(|s| (s["name"].clone(), s["location"]["uri"].clone())).collect();
        assert_eq!(names, [(json!("C"), json!("file:///p/a.py")), (json!("m"), json!("file:///p/a.py"))]);
        let info = json!({"name": "f", "kind": 12, "location": {"uri": "file:///x.py"}});
        assert_eq!(symbol_information(&info).expect("symbol")["location"]["range"]["start"]["line"], 0);
    }

    #[test]
    fn typescript_runs_one_full_tsserver_so_early_answers_see_imports() {
        let options = Lang::TypeScript.initialization_options();
        assert_eq!(options["tsserver"]["useSyntaxServer"], "never");
        assert_eq!(Lang::parse("javascript").expect("js").initialization_options(), options);
        assert!(Lang::Python.initialization_options().is_null(), "pylsp gets none");
    }

    #[test]
    fn file_uris_are_percent_encoded_and_decoded() {
        assert_eq!(file_uri(Path::new("/a b/c%.py")), "file:///a%20b/c%25.py");
        assert_eq!(percent_decode("/a%20b/c%25.py"), "/a b/c%.py");
        assert_eq!(percent_decode("/100%"), "/100%");
    }

    #[tokio::test]
    async fn a_language_without_a_server_names_what_to_install() {
        if which("typescript-language-server", std::env::var_os("PATH").as_deref()).is_some() {
            eprintln!("skipped: typescript-language-server is installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let m = LspManager::new(dir.path().to_path_buf());
        let req = ServerRequest { language_id: "typescript".into(), path_to_project: ".".into() };
        let e = m.start(req).await.expect_err("no server");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("npm install -g typescript-language-server typescript"), "{e}");
        let req = ServerRequest { language_id: "cobol".into(), path_to_project: ".".into() };
        assert_eq!(m.start(req).await.expect_err("refused").kind(), ErrorKind::InvalidArgument);
        let doc =
            DocumentRequest { language_id: "python".into(), path_to_project: ".".into(), uri: "file://a.py".into() };
        assert_eq!(m.did_open(doc).await.expect_err("not started").kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn pylsp_completes_a_known_symbol_and_lists_the_functions_of_a_file() {
        if which("pylsp", std::env::var_os("PATH").as_deref()).is_none() {
            eprintln!("skipped: pylsp is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let project = dir.path().join("proj");
        std::fs::create_dir(&project).expect("mkdir");
        std::fs::write(
            project.join("lib.py"),
            "def compute_total(a, b):\n    return a + b\n\n\nclass Ledger:\n    def balance(self):\n        return 0\n",
        )
        .expect("write");
        std::fs::write(project.join("main.py"), "import lib\n\nlib.comp").expect("write");
        let m = LspManager::new(dir.path().to_path_buf());
        let server = || ServerRequest { language_id: "python".into(), path_to_project: "proj".into() };
        m.start(server()).await.expect("start");
        m.start(server()).await.expect("a second start is a no-op");
        let doc = |uri: &str| DocumentRequest {
            language_id: "python".into(),
            path_to_project: "proj".into(),
            uri: uri.into(),
        };
        m.did_open(doc("file://main.py")).await.expect("did_open");
        let req = CompletionRequest {
            language_id: "python".into(),
            path_to_project: "proj".into(),
            uri: "file://main.py".into(),
            position: Position { line: 2, character: 8 },
            context: None,
        };
        let list = m.completions(req).await.expect("completions");
        let labels: Vec<_> =
            list["items"].as_array().expect("items").iter().filter_map(|i| i["label"].as_str()).collect();
        assert!(labels.iter().any(|l| l.starts_with("compute_total")), "{labels:?}");

        let abs = format!("file://{}", project.join("lib.py").display());
        let symbols = m.document_symbols(doc(&abs)).await.expect("symbols");
        let names: Vec<_> = symbols.iter().filter_map(|s| s["name"].as_str()).collect();
        assert!(names.contains(&"compute_total") && names.contains(&"Ledger"), "{names:?}");
        assert!(symbols.iter().all(|s| s["location"]["range"]["start"]["line"].is_u64()));

        let q = WorkspaceSymbolsQuery {
            query: Some("total".into()),
            language_id: "python".into(),
            path_to_project: "proj".into(),
        };
        let found = m.workspace_symbols(q).await.expect("workspace symbols");
        let names: Vec<_> = found.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(names, ["compute_total"]);
        m.did_close(doc("file://main.py")).await.expect("did_close");
        m.stop(server()).await.expect("stop");
        assert_eq!(m.stop(server()).await.expect_err("stopped").kind(), ErrorKind::NotFound);
    }
}
