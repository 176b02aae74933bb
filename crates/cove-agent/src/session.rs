//! Sessions: one persistent shell per session, so `cd` and exported variables carry over from
//! one command to the next, plus the entrypoint, served as the read-only session `entrypoint`.
//!
//! How a command runs: the agent writes the command to `<dir>/<n>.sh`, makes a fifo `<dir>/<n>.in`
//! for its stdin (held open by the agent for `/input`), and sends the shell one line:
//!
//! ```text
//! { command . '<dir>/<n>.sh'; } < '<dir>/<n>.in'; printf '\036COVE-<id> %d\n' "$?"; printf '\036COVE-<id>\n' >&2
//! ```
//!
//! The shell's stdout and stderr are pipes read by the agent; everything up to the marker on each
//! stream belongs to the running command, and the stdout marker carries the exit code. `command .`
//! sources the file in the shell itself (so state persists) while a syntax error in it only fails
//! that command instead of ending the shell. Commands of a session run one after another.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::logs::{CommandLog, LogText, Stream};
use crate::process::{exit_code, find_shell, prepare};
use crate::sys;

/// The reserved id of the entrypoint's pseudo-session.
pub const ENTRYPOINT: &str = "entrypoint";
/// How long output is still collected after a shell or entrypoint has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long a stopping agent waits for the entrypoint after forwarding the signal.
pub const ENTRYPOINT_STOP_GRACE: Duration = Duration::from_secs(10);

/// `POST /process/session` body. Unknown keys are refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateSessionRequest {
    /// Chosen by the client.
    pub session_id: String,
}

/// `POST /process/session/{id}/exec` body. `async` (TypeScript SDK) means the same as `runAsync`.
/// Unknown keys are refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecRequest {
    /// Run in the session's shell.
    pub command: String,
    /// Answer at once with the command id.
    pub run_async: Option<bool>,
    /// Same as `runAsync`.
    #[serde(rename = "async")]
    pub is_async: Option<bool>,
    /// Do not copy data sent to `/input` into the command's output.
    pub suppress_input_echo: Option<bool>,
}

/// `POST /process/session/{id}/exec` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResponse {
    /// The command's id.
    pub cmd_id: String,
    /// Both streams (sync only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// fd 1 (sync only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// fd 2 (sync only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Exit code (sync only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// `Session`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDto {
    /// The id.
    pub session_id: String,
    /// Commands in the order they were sent.
    pub commands: Vec<CommandDto>,
}

/// `Command`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandDto {
    /// The id.
    pub id: String,
    /// As sent.
    pub command: String,
    /// Once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// `SessionCommandLogsResponse`: always all three strings.
#[derive(Debug, Serialize)]
pub struct LogsResponse {
    /// Both streams.
    pub output: String,
    /// fd 1.
    pub stdout: String,
    /// fd 2.
    pub stderr: String,
}

/// A failed session operation.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The id is empty or contains `/`.
    #[error("invalid session id {id:?}: it must be non-empty and contain no '/'")]
    InvalidId {
        /// As sent.
        id: String,
    },
    /// Taken.
    #[error("session {id} already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// No such session.
    #[error("session {id} not found")]
    NotFound {
        /// The id.
        id: String,
    },
    /// No such command in the session.
    #[error("command {cmd_id} not found in session {session_id}")]
    CommandNotFound {
        /// The session.
        session_id: String,
        /// The command.
        cmd_id: String,
    },
    /// Empty command.
    #[error("command is empty")]
    EmptyCommand,
    /// The session's shell has exited (e.g. after `exit`).
    #[error("the shell of session {id} has exited; delete the session and create it again")]
    ShellExited {
        /// The id.
        id: String,
    },
    /// The entrypoint session is read-only.
    #[error("the entrypoint session is read-only")]
    EntrypointReadOnly,
    /// Input for a command that has ended.
    #[error("command {cmd_id} has already finished")]
    CommandFinished {
        /// The command.
        cmd_id: String,
    },
    /// The session's runtime directory could not be created.
    #[error("create session directory {path}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shell could not be started.
    #[error("start shell {shell}")]
    SpawnShell {
        /// The shell.
        shell: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing to a command's stdin failed.
    #[error("write input to command {cmd_id}")]
    WriteInput {
        /// The command.
        cmd_id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SessionError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::InvalidId { .. } | SessionError::EmptyCommand | SessionError::EntrypointReadOnly => {
                ErrorKind::InvalidArgument
            }
            SessionError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            SessionError::NotFound { .. } | SessionError::CommandNotFound { .. } => ErrorKind::NotFound,
            SessionError::ShellExited { .. } | SessionError::CommandFinished { .. } => ErrorKind::Gone,
            SessionError::CreateDir { .. } | SessionError::SpawnShell { .. } | SessionError::WriteInput { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// One command of a session (or the entrypoint).
#[derive(Debug)]
pub struct SessionCommand {
    /// Its id.
    pub id: String,
    /// As sent.
    pub command: String,
    /// Output and end.
    pub log: CommandLog,
    /// The command's stdin: input sent before it starts is kept and written once it has.
    stdin: tokio::sync::Mutex<Stdin>,
    echo_input: bool,
}

impl SessionCommand {
    fn new(command: String, echo_input: bool) -> Self {
        SessionCommand {
            id: crate::sys::new_uuid().to_string(),
            command,
            log: CommandLog::default(),
            stdin: tokio::sync::Mutex::new(Stdin::Pending(Vec::new())),
            echo_input,
        }
    }

    fn dto(&self) -> CommandDto {
        CommandDto { id: self.id.clone(), command: self.command.clone(), exit_code: self.log.exit_code() }
    }
}

/// A command's stdin over its life.
#[derive(Debug)]
enum Stdin {
    /// Not started yet: input is buffered.
    Pending(Vec<u8>),
    /// Running: the agent's end of the fifo.
    Open(pipe::Sender),
    /// Finished.
    Closed,
}

/// A live session.
#[derive(Debug)]
struct Session {
    id: String,
    commands: Mutex<Vec<Arc<SessionCommand>>>,
    queue: mpsc::UnboundedSender<Arc<SessionCommand>>,
    pgid: u32,
    dead: Arc<AtomicBool>,
}

/// The entrypoint process and its log.
#[derive(Debug)]
struct Entrypoint {
    cmd: Arc<SessionCommand>,
    pgid: u32,
}

/// All sessions of the agent.
#[derive(Debug)]
pub struct SessionManager {
    workdir: PathBuf,
    runtime_dir: PathBuf,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    entrypoint: OnceLock<Entrypoint>,
}

enum Event {
    Data(Stream, Bytes),
    Marker(Stream, Option<i32>),
    Eof(Stream),
}

struct Active {
    cmd: Arc<SessionCommand>,
    done: [bool; 2],
    code: Option<i32>,
    files: [PathBuf; 2],
}

impl SessionManager {
    /// A manager whose shells start in `workdir` and keep their fifos under `runtime_dir`.
    pub fn new(workdir: PathBuf, runtime_dir: PathBuf) -> Self {
        SessionManager { workdir, runtime_dir, sessions: Mutex::default(), entrypoint: OnceLock::new() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the session's shell.
    pub fn create(&self, id: &str) -> Result<(), SessionError> {
        if id.is_empty() || id.contains('/') {
            return Err(SessionError::InvalidId { id: id.to_string() });
        }
        if id == ENTRYPOINT || self.map().contains_key(id) {
            return Err(SessionError::AlreadyExists { id: id.to_string() });
        }
        let dir = self.runtime_dir.join("sessions").join(crate::sys::new_uuid().simple().to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| SessionError::CreateDir { path: dir.display().to_string(), source })?;
        let shell = find_shell();
        let mut cmd = Command::new(shell);
        prepare(&mut cmd, &self.workdir, None);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            let _ = std::fs::remove_dir_all(&dir);
            SessionError::SpawnShell { shell: shell.to_string(), source }
        })?;
        let pgid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three streams were configured as pipes");
        };
        let marker = format!("COVE-{}", crate::sys::new_uuid().simple());
        let (events_tx, events) = mpsc::unbounded_channel();
        let wire = format!("\x1e{marker}").into_bytes();
        tokio::spawn(read_marked(stdout, Stream::Stdout, wire.clone(), events_tx.clone()));
        tokio::spawn(read_marked(stderr, Stream::Stderr, wire, events_tx));
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let worker = Worker { child, stdin, events, queue: queue_rx, dir, marker, dead: dead.clone(), next: 0 };
        tokio::spawn(worker.run(id.to_string()));
        let session = Session { id: id.to_string(), commands: Mutex::default(), queue, pgid, dead };
        let mut map = self.map();
        if map.contains_key(id) {
            sys::kill_group(pgid, libc::SIGKILL);
            return Err(SessionError::AlreadyExists { id: id.to_string() });
        }
        map.insert(id.to_string(), Arc::new(session));
        tracing::info!(session_id = id, shell, pgid, "session created");
        Ok(())
    }

    /// Every session except the entrypoint, by id.
    pub fn list(&self) -> Vec<SessionDto> {
        let mut sessions: Vec<_> = self.map().values().cloned().collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        sessions.iter().map(|s| s.dto()).collect()
    }

    /// One session (or `entrypoint`).
    pub fn get(&self, id: &str) -> Result<SessionDto, SessionError> {
        if id == ENTRYPOINT {
            let ep = self.entrypoint.get().ok_or_else(|| SessionError::NotFound { id: id.to_string() })?;
            return Ok(SessionDto { session_id: ENTRYPOINT.into(), commands: vec![ep.cmd.dto()] });
        }
        Ok(self.session(id)?.dto())
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        self.map().get(id).cloned().ok_or_else(|| SessionError::NotFound { id: id.to_string() })
    }

    /// Kills the session's shell and everything in its process group.
    pub fn delete(&self, id: &str) -> Result<(), SessionError> {
        if id == ENTRYPOINT {
            return Err(SessionError::EntrypointReadOnly);
        }
        let s = self.map().remove(id).ok_or_else(|| SessionError::NotFound { id: id.to_string() })?;
        sys::kill_group(s.pgid, libc::SIGKILL);
        tracing::info!(session_id = id, "session deleted");
        Ok(())
    }

    /// Queues a command; waits for it unless `runAsync`/`async`.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<(ExecResponse, bool), SessionError> {
        if id == ENTRYPOINT {
            return Err(SessionError::EntrypointReadOnly);
        }
        if req.command.trim().is_empty() {
            return Err(SessionError::EmptyCommand);
        }
        let s = self.session(id)?;
        if s.dead.load(Ordering::SeqCst) {
            return Err(SessionError::ShellExited { id: id.to_string() });
        }
        let cmd = Arc::new(SessionCommand::new(req.command, !req.suppress_input_echo.unwrap_or(false)));
        s.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(cmd.clone());
        if s.queue.send(cmd.clone()).is_err() {
            return Err(SessionError::ShellExited { id: id.to_string() });
        }
        tracing::debug!(session_id = id, cmd_id = %cmd.id, "command queued");
        let is_async = req.run_async.unwrap_or(false) || req.is_async.unwrap_or(false);
        if is_async {
            let r = ExecResponse { cmd_id: cmd.id.clone(), output: None, stdout: None, stderr: None, exit_code: None };
            return Ok((r, true));
        }
        let code = cmd.log.wait().await;
        let LogText { output, stdout, stderr } = cmd.log.text();
        let r = ExecResponse {
            cmd_id: cmd.id.clone(),
            output: Some(output),
            stdout: Some(stdout),
            stderr: Some(stderr),
            exit_code: Some(code),
        };
        Ok((r, false))
    }

    /// A command of a session (or of `entrypoint`).
    pub fn command(&self, id: &str, cmd_id: &str) -> Result<Arc<SessionCommand>, SessionError> {
        let not_found = || SessionError::CommandNotFound { session_id: id.to_string(), cmd_id: cmd_id.to_string() };
        if id == ENTRYPOINT {
            let ep = self.entrypoint.get().ok_or_else(|| SessionError::NotFound { id: id.to_string() })?;
            return if ep.cmd.id == cmd_id { Ok(ep.cmd.clone()) } else { Err(not_found()) };
        }
        let s = self.session(id)?;
        let cmds = s.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cmds.iter().find(|c| c.id == cmd_id).cloned().ok_or_else(not_found)
    }

    /// The entrypoint's command, if one was started.
    pub fn entrypoint(&self) -> Result<Arc<SessionCommand>, SessionError> {
        self.entrypoint.get().map(|e| e.cmd.clone()).ok_or_else(|| SessionError::NotFound { id: ENTRYPOINT.into() })
    }

    /// Writes `data` to a running command's stdin (and echoes it into its output unless the
    /// command was started with `suppressInputEcho`). Like Daytona's daemon, a newline is
    /// appended unless `data` ends with one: the SDKs send a line without it, and a command
    /// waiting in `read` would otherwise never see the end of its line.
    pub async fn send_input(&self, id: &str, cmd_id: &str, data: &str) -> Result<(), SessionError> {
        let data = if data.ends_with('\n') { data.to_string() } else { format!("{data}\n") };
        let data = data.as_str();
        let cmd = self.command(id, cmd_id)?;
        let mut stdin = cmd.stdin.lock().await;
        match &mut *stdin {
            _ if cmd.log.is_finished() => return Err(SessionError::CommandFinished { cmd_id: cmd_id.to_string() }),
            Stdin::Closed => return Err(SessionError::CommandFinished { cmd_id: cmd_id.to_string() }),
            Stdin::Pending(buf) => buf.extend_from_slice(data.as_bytes()),
            Stdin::Open(pipe) => pipe
                .write_all(data.as_bytes())
                .await
                .map_err(|source| SessionError::WriteInput { cmd_id: cmd_id.to_string(), source })?,
        }
        if cmd.echo_input {
            cmd.log.push(Stream::Stdout, Bytes::copy_from_slice(data.as_bytes()));
        }
        Ok(())
    }

    /// Starts the entrypoint (`args[0]` with the rest as arguments, no shell); its output goes to
    /// the `entrypoint` session's log. Only the first call starts anything.
    pub fn start_entrypoint(&self, args: &[String]) {
        let Some((program, rest)) = args.split_first() else { return };
        let cmd = Arc::new(SessionCommand::new(args.join(" "), false));
        let mut command = Command::new(program);
        command.args(rest);
        prepare(&mut command, &self.workdir, None);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(program, error = %e, "entrypoint did not start");
                cmd.log.push(Stream::Stderr, Bytes::from(format!("cove-agent: start {program}: {e}\n")));
                cmd.log.finish(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
                let _ = self.entrypoint.set(Entrypoint { cmd, pgid: 0 });
                return;
            }
        };
        let pgid = child.id().unwrap_or(0);
        tracing::info!(command = %cmd.command, pid = pgid, "entrypoint started");
        let readers = [
            child.stdout.take().map(|r| tokio::spawn(copy_to_log(r, Stream::Stdout, cmd.clone()))),
            child.stderr.take().map(|r| tokio::spawn(copy_to_log(r, Stream::Stderr, cmd.clone()))),
        ];
        let log_cmd = cmd.clone();
        tokio::spawn(async move {
            let code = child.wait().await.map_or(-1, exit_code);
            let drain = async {
                for r in readers.into_iter().flatten() {
                    let _ = r.await;
                }
            };
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
            tracing::info!(exit_code = code, "entrypoint exited");
            log_cmd.log.finish(code);
        });
        let _ = self.entrypoint.set(Entrypoint { cmd, pgid });
    }

    /// On agent shutdown: forwards `sig` to the entrypoint's process group and waits (bounded)
    /// for it to exit; kills every session shell.
    pub async fn shutdown(&self, sig: libc::c_int) {
        for s in self.map().values() {
            sys::kill_group(s.pgid, libc::SIGKILL);
        }
        if let Some(ep) = self.entrypoint.get() {
            sys::kill_group(ep.pgid, sig);
            let _ = tokio::time::timeout(ENTRYPOINT_STOP_GRACE, ep.cmd.log.wait()).await;
        }
    }
}

impl Session {
    fn dto(&self) -> SessionDto {
        let cmds = self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        SessionDto { session_id: self.id.clone(), commands: cmds.iter().map(|c| c.dto()).collect() }
    }
}

/// Owns a session's shell: starts queued commands one at a time and routes output to them.
struct Worker {
    child: tokio::process::Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Event>,
    queue: mpsc::UnboundedReceiver<Arc<SessionCommand>>,
    dir: PathBuf,
    marker: String,
    dead: Arc<AtomicBool>,
    next: u64,
}

impl Worker {
    async fn run(mut self, session_id: String) {
        let mut active: Option<Active> = None;
        let mut shell_code: Option<i32> = None;
        let mut eof = [false; 2];
        let mut drain_until = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            if shell_code.is_some() && eof == [true, true] {
                break;
            }
            tokio::select! {
                Some(cmd) = self.queue.recv(), if active.is_none() && shell_code.is_none() => {
                    match self.start(&cmd).await {
                        Ok(files) => active = Some(Active { cmd, done: [false; 2], code: None, files }),
                        Err(e) => {
                            cmd.log.push(Stream::Stderr, Bytes::from(format!("cove-agent: {e}\n")));
                            cmd.log.finish(-1);
                        }
                    }
                }
                Some(ev) = self.events.recv() => match ev {
                    Event::Data(stream, data) => match active.as_ref() {
                        Some(a) if !a.done[stream as usize] => a.cmd.log.push(stream, data),
                        _ => tracing::debug!(session_id, bytes = data.len(), "output outside any command dropped"),
                    },
                    Event::Marker(stream, code) => {
                        if let Some(a) = active.as_mut() {
                            a.done[stream as usize] = true;
                            if stream == Stream::Stdout {
                                a.code = code;
                            }
                            if a.done == [true, true] && let Some(a) = active.take() {
                                finish(a, None).await;
                            }
                        }
                    }
                    Event::Eof(stream) => eof[stream as usize] = true,
                },
                status = self.child.wait(), if shell_code.is_none() => {
                    let code = status.map_or(-1, exit_code);
                    tracing::info!(session_id, exit_code = code, "session shell exited");
                    self.dead.store(true, Ordering::SeqCst);
                    shell_code = Some(code);
                    drain_until = Instant::now() + DRAIN_AFTER_EXIT;
                }
                _ = tokio::time::sleep_until(drain_until), if shell_code.is_some() => break,
                else => break,
            }
        }
        let code = shell_code.unwrap_or(-1);
        if let Some(a) = active.take() {
            finish(a, Some(code)).await;
        }
        self.queue.close();
        while let Ok(cmd) = self.queue.try_recv() {
            cmd.log.push(Stream::Stderr, Bytes::from_static(b"cove-agent: the session shell has exited\n"));
            cmd.log.finish(-1);
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }

    /// Writes the command file and stdin fifo, opens the fifo, and sends the shell its line.
    async fn start(&mut self, cmd: &Arc<SessionCommand>) -> Result<[PathBuf; 2], std::io::Error> {
        let cmd_stdin = cmd.clone();
        self.next += 1;
        let script = self.dir.join(format!("{}.sh", self.next));
        let fifo = self.dir.join(format!("{}.in", self.next));
        let mut text = cmd.command.clone();
        text.push('\n');
        tokio::fs::write(&script, text).await?;
        sys::mkfifo(&fifo, 0o600).map_err(std::io::Error::other)?;
        // Read-write, so the open never blocks and the shell's `< fifo` finds a writer.
        let sender = pipe::OpenOptions::new().read_write(true).open_sender(&fifo)?;
        // Input sent while the command was queued goes first; written by a task so that a command
        // that does not read its stdin cannot stall the worker.
        tokio::spawn(async move {
            let mut stdin = cmd_stdin.stdin.lock().await;
            let pending = match std::mem::replace(&mut *stdin, Stdin::Closed) {
                Stdin::Pending(buf) => buf,
                _ => return,
            };
            *stdin = Stdin::Open(sender);
            if let (false, Stdin::Open(pipe)) = (pending.is_empty(), &mut *stdin) {
                let _ = pipe.write_all(&pending).await;
            }
        });
        let m = &self.marker;
        let line = format!(
            "{{ command . {}; }} < {}; printf '\\036{m} %d\\n' \"$?\"; printf '\\036{m}\\n' >&2\n",
            sh_quote(&script),
            sh_quote(&fifo)
        );
        self.stdin.write_all(line.as_bytes()).await?;
        tracing::debug!(cmd_id = %cmd.id, "command started");
        Ok([script, fifo])
    }
}

async fn finish(a: Active, shell_code: Option<i32>) {
    *a.cmd.stdin.lock().await = Stdin::Closed;
    for f in &a.files {
        let _ = tokio::fs::remove_file(f).await;
    }
    a.cmd.log.finish(shell_code.or(a.code).unwrap_or(-1));
    tracing::debug!(cmd_id = %a.cmd.id, exit_code = ?a.cmd.log.exit_code(), "command finished");
}

/// `'...'` with embedded quotes escaped.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Reads a shell stream, splitting it at the command-end markers.
async fn read_marked<R: AsyncRead + Unpin>(
    mut r: R,
    stream: Stream,
    marker: Vec<u8>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            if !pending.is_empty() {
                let _ = tx.send(Event::Data(stream, Bytes::from(pending)));
            }
            let _ = tx.send(Event::Eof(stream));
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        for ev in split_markers(&mut pending, &marker, stream) {
            let _ = tx.send(ev);
        }
    }
}

/// Takes complete data and markers off the front of `pending`, leaving a possible partial marker.
fn split_markers(pending: &mut Vec<u8>, marker: &[u8], stream: Stream) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match find(pending, marker) {
            Some(pos) => {
                let after = pos + marker.len();
                let Some(nl) = pending[after..].iter().position(|b| *b == b'\n') else {
                    if pos > 0 {
                        out.push(Event::Data(stream, Bytes::copy_from_slice(&pending[..pos])));
                        pending.drain(..pos);
                    }
                    return out;
                };
                if pos > 0 {
                    out.push(Event::Data(stream, Bytes::copy_from_slice(&pending[..pos])));
                }
                let code = std::str::from_utf8(&pending[after..after + nl]).ok().and_then(|s| s.trim().parse().ok());
                out.push(Event::Marker(stream, code));
                pending.drain(..after + nl + 1);
            }
            None => {
                let keep = (1..marker.len().min(pending.len() + 1))
                    .rev()
                    .find(|k| pending.ends_with(&marker[..*k]))
                    .unwrap_or(0);
                let emit = pending.len() - keep;
                if emit > 0 {
                    out.push(Event::Data(stream, Bytes::copy_from_slice(&pending[..emit])));
                    pending.drain(..emit);
                }
                return out;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn copy_to_log<R: AsyncRead + Unpin>(mut r: R, stream: Stream, cmd: Arc<SessionCommand>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        cmd.log.push(stream, Bytes::copy_from_slice(&buf[..n]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(events: Vec<Event>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Data(_, d) => format!("data:{}", String::from_utf8_lossy(&d)),
                Event::Marker(_, c) => format!("marker:{c:?}"),
                Event::Eof(_) => "eof".into(),
            })
            .collect()
    }

    #[test]
    fn markers_split_output_even_when_they_arrive_in_pieces() {
        let m = b"\x1eCOVE-x";
        let mut p = b"hello\x1eCO".to_vec();
        assert_eq!(render(split_markers(&mut p, m, Stream::Stdout)), vec!["data:hello"]);
        p.extend_from_slice(b"VE-x 3");
        assert!(split_markers(&mut p, m, Stream::Stdout).is_empty());
        p.extend_from_slice(b"\nnext\x1eCOVE-x\n");
        assert_eq!(
            render(split_markers(&mut p, m, Stream::Stdout)),
            vec!["marker:Some(3)", "data:next", "marker:None"]
        );
        assert!(p.is_empty());
    }

    #[tokio::test]
    async fn input_without_a_newline_completes_the_line_a_waiting_read_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = SessionManager::new(dir.path().to_path_buf(), dir.path().join("run"));
        m.create("r").expect("create");
        let req = ExecRequest {
            command: "read a; read b; echo \"got:$a:$b\"".into(),
            run_async: Some(true),
            is_async: None,
            suppress_input_echo: Some(true),
        };
        let (r, _) = m.exec("r", req).await.expect("exec");
        // One line without its newline, one with: each reaches the command as exactly one line.
        m.send_input("r", &r.cmd_id, "first").await.expect("input");
        m.send_input("r", &r.cmd_id, "second\n").await.expect("input");
        let cmd = m.command("r", &r.cmd_id).expect("command");
        let code = tokio::time::timeout(Duration::from_secs(5), cmd.log.wait()).await.expect("read got its lines");
        assert_eq!((code, cmd.log.text().stdout.as_str()), (0, "got:first:second\n"));
        m.delete("r").expect("delete");
    }

    #[test]
    fn text_that_only_looks_like_a_marker_prefix_is_released_later() {
        let m = b"\x1eCOVE-x";
        let mut p = b"a\x1eC".to_vec();
        assert_eq!(render(split_markers(&mut p, m, Stream::Stdout)), vec!["data:a"]);
        p.extend_from_slice(b"zz");
        assert_eq!(render(split_markers(&mut p, m, Stream::Stdout)), vec!["data:\x1eCzz"]);
    }
}
