//! One-shot processes: `POST /process/execute` (a shell reading the command on stdin) and
//! `POST /process/code-run` (an interpreter reading the code; Python runs under
//! [`crate::charts::PRELUDE`], which reports matplotlib charts). Both combine stdout and stderr in
//! arrival order by giving the child one pipe as fd 1 and fd 2.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::sys;

/// Shells tried in order for `execute` and sessions.
pub const SHELLS: [&str; 3] = ["/bin/bash", "/usr/bin/bash", "/bin/sh"];
/// How long to keep reading after the process has exited (background children may hold the pipe
/// open forever; their late output is not waited for).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Exit code a shell gives for a missing command.
pub const NOT_FOUND_EXIT: i32 = 127;

/// `POST /process/execute` body. Unknown keys are refused by name (both SDKs send only these).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecuteRequest {
    /// Passed verbatim to the shell on stdin.
    pub command: String,
    /// Working directory (relative ones resolve against the agent's workdir).
    pub cwd: Option<String>,
    /// Extra environment.
    pub envs: Option<HashMap<String, String>>,
    /// Seconds; 0 or absent means none.
    pub timeout: Option<u64>,
}

/// `POST /process/code-run` body. Unknown keys are refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CodeRunRequest {
    /// The program text.
    pub code: String,
    /// `python` (default), `javascript` or `typescript`.
    #[serde(default)]
    pub language: Option<String>,
    /// Arguments after the program.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Extra environment.
    pub envs: Option<HashMap<String, String>>,
    /// Seconds; 0 or absent means none.
    pub timeout: Option<u64>,
}

/// The answer of both endpoints.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    /// The exit code; 128 + signal when killed; -1 when it could not start.
    pub exit_code: i32,
    /// stdout and stderr combined.
    pub result: String,
}

/// A failed process operation.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `command` is empty.
    #[error("command is empty")]
    EmptyCommand,
    /// The language is not one the agent runs.
    #[error("unsupported language {language:?}; use python, javascript or typescript")]
    UnsupportedLanguage {
        /// As sent.
        language: String,
    },
    /// The time limit passed; the process group was killed.
    #[error("command timed out after {secs} seconds and was killed")]
    TimedOut {
        /// The limit.
        secs: u64,
    },
    /// The pipe for the child's output could not be created.
    #[error("create the output pipe")]
    Pipe(#[source] std::io::Error),
    /// Writing the code to a temporary file failed.
    #[error("write the program to {path}")]
    WriteProgram {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ProcessError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProcessError::EmptyCommand | ProcessError::UnsupportedLanguage { .. } => ErrorKind::InvalidArgument,
            ProcessError::TimedOut { .. } => ErrorKind::Timeout,
            ProcessError::Pipe(_) | ProcessError::WriteProgram { .. } => ErrorKind::Internal,
        }
    }
}

/// Runs `req.command` through the shell.
pub async fn execute(workdir: &Path, req: ExecuteRequest) -> Result<ExecuteResponse, ProcessError> {
    if req.command.trim().is_empty() {
        return Err(ProcessError::EmptyCommand);
    }
    let shell = find_shell();
    let mut cmd = Command::new(shell);
    let cwd = resolve(workdir, req.cwd.as_deref().filter(|c| !c.is_empty()));
    prepare(&mut cmd, &cwd, req.envs.as_ref());
    tracing::debug!(shell, cwd = %cwd.display(), "execute");
    run_collect(cmd, Some(req.command.into_bytes()), req.timeout).await
}

/// Runs `req.code` with the language's interpreter.
pub async fn code_run(workdir: &Path, req: CodeRunRequest) -> Result<ExecuteResponse, ProcessError> {
    let language = req.language.as_deref().filter(|l| !l.is_empty()).unwrap_or("python").to_ascii_lowercase();
    let argv = req.argv.unwrap_or_default();
    let path_var = req.envs.as_ref().and_then(|e| e.get("PATH").cloned().map(OsString::from));
    let path_var = path_var.or_else(|| std::env::var_os("PATH"));
    let find = |name: &str| which(name, path_var.as_deref());
    let missing = |what: &str, why: &str| ExecuteResponse {
        exit_code: NOT_FOUND_EXIT,
        result: format!("cove-agent: {what}: command not found (needed to run {why} code in this sandbox)\n"),
    };
    let (program, mut args, stdin, tmp): (PathBuf, Vec<String>, Option<Vec<u8>>, Option<PathBuf>) =
        match language.as_str() {
            "python" | "python3" => match find("python3") {
                // The code comes on stdin; the prelude runs it and reports matplotlib charts.
                Some(p) => {
                    let args = vec!["-u".into(), "-c".into(), crate::charts::PRELUDE.into()];
                    (p, args, Some(req.code.into_bytes()), None)
                }
                None => return Ok(missing("python3", "python")),
            },
            "javascript" | "js" | "node" => match find("node") {
                Some(p) => (p, vec!["-".into()], Some(req.code.into_bytes()), None),
                None => return Ok(missing("node", "javascript")),
            },
            "typescript" | "ts" => {
                let (program, pre) = match (find("ts-node"), find("npx")) {
                    (Some(p), _) => (p, vec![]),
                    (None, Some(npx)) => (npx, vec!["--no-install".to_string(), "ts-node".to_string()]),
                    (None, None) => return Ok(missing("ts-node (or npx)", "typescript")),
                };
                let file = std::env::temp_dir().join(format!("cove-code-{}.ts", crate::sys::new_uuid().simple()));
                tokio::fs::write(&file, req.code.as_bytes())
                    .await
                    .map_err(|source| ProcessError::WriteProgram { path: file.display().to_string(), source })?;
                let mut args = pre;
                args.push(file.display().to_string());
                (program, args, None, Some(file))
            }
            other => return Err(ProcessError::UnsupportedLanguage { language: other.to_string() }),
        };
    args.extend(argv);
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    prepare(&mut cmd, workdir, req.envs.as_ref());
    tracing::debug!(program = %program.display(), %language, "code run");
    let result = run_collect(cmd, stdin, req.timeout).await;
    if let Some(tmp) = tmp {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    result
}

/// The first existing shell of [`SHELLS`].
pub fn find_shell() -> &'static str {
    SHELLS.iter().copied().find(|s| Path::new(s).exists()).unwrap_or("/bin/sh")
}

/// `path` if absolute, else `workdir/path`; `None` gives `workdir`. `..` is left to the kernel.
pub fn resolve(workdir: &Path, path: Option<&str>) -> PathBuf {
    match path {
        None => workdir.to_path_buf(),
        Some(p) if Path::new(p).is_absolute() => PathBuf::from(p),
        Some(p) => workdir.join(p),
    }
}

/// Looks `name` up in the colon-separated `path` like a shell would.
pub fn which(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.map(|p| p.to_os_string()).unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Working directory, environment (without the agent's own `COVE_*` settings), own process group.
pub fn prepare(cmd: &mut Command, cwd: &Path, envs: Option<&HashMap<String, String>>) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COVE_") {
            cmd.env_remove(k);
        }
    }
    if let Some(envs) = envs {
        cmd.envs(envs);
    }
    cmd.current_dir(cwd).process_group(0);
}

/// Shell-style exit code: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

/// Spawns `cmd` with one pipe as stdout and stderr, feeds `stdin`, and collects the output until
/// the process exits (plus a short drain), killing its process group at the time limit.
async fn run_collect(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Option<u64>,
) -> Result<ExecuteResponse, ProcessError> {
    let (tx, mut rx) = tokio::net::unix::pipe::pipe().map_err(ProcessError::Pipe)?;
    let fd = tx.into_blocking_fd().map_err(ProcessError::Pipe)?;
    let fd2 = fd.try_clone().map_err(ProcessError::Pipe)?;
    cmd.stdout(Stdio::from(fd)).stderr(Stdio::from(fd2));
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let spawned = cmd.spawn();
    // The Command holds our copies of the pipe's write end: drop them so EOF can come.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Ok(ExecuteResponse { exit_code: -1, result: format!("cove-agent: start process: {e}\n") }),
    };
    let pgid = child.id().unwrap_or(0);
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // A child that exits without reading its stdin gives EPIPE here; that is not an error.
            let _ = pipe.write_all(&data).await;
        });
    }
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let limit = timeout.filter(|t| *t > 0);
    let deadline = limit.map_or(far, |t| Instant::now() + Duration::from_secs(t));
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (mut status, mut eof, mut drain_until) = (None, false, far);
    while !(eof && status.is_some()) {
        tokio::select! {
            r = rx.read(&mut chunk), if !eof => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_or(-1, exit_code));
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            }
            _ = tokio::time::sleep_until(drain_until), if status.is_some() => break,
            _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                sys::kill_group(pgid, libc::SIGKILL);
                let _ = child.wait().await;
                return Err(ProcessError::TimedOut { secs: limit.unwrap_or(0) });
            }
        }
    }
    let result = String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(ExecuteResponse { exit_code: status.unwrap_or(-1), result })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: &str, timeout: Option<u64>) -> ExecuteRequest {
        ExecuteRequest { command: command.into(), cwd: None, envs: None, timeout }
    }

    #[tokio::test]
    async fn execute_combines_stdout_and_stderr_in_order_and_keeps_the_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = execute(dir.path(), req("echo hi; echo err >&2; echo bye; exit 3", None)).await.expect("runs");
        assert_eq!(r, ExecuteResponse { exit_code: 3, result: "hi\nerr\nbye\n".into() });
    }

    #[tokio::test]
    async fn execute_resolves_a_relative_cwd_against_the_workdir_and_applies_envs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let mut r = req("pwd; echo $GREETING", None);
        r.cwd = Some("sub".into());
        r.envs = Some(HashMap::from([("GREETING".to_string(), "hello".to_string())]));
        let out = execute(dir.path(), r).await.expect("runs");
        assert_eq!(out.result, format!("{}\nhello\n", dir.path().join("sub").display()));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let e = execute(dir.path(), req(&cmd, Some(1))).await.expect_err("times out");
        assert!(matches!(e, ProcessError::TimedOut { secs: 1 }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the background child was not killed");
    }

    #[tokio::test]
    async fn an_empty_command_is_refused() {
        let e = execute(Path::new("/"), req("  ", None)).await.expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn a_missing_cwd_gives_exit_code_minus_one() {
        let mut r = req("true", None);
        r.cwd = Some("/nonexistent/dir".into());
        let out = execute(Path::new("/"), r).await.expect("answers");
        assert_eq!(out.exit_code, -1);
    }

    #[tokio::test]
    async fn code_run_reports_a_missing_interpreter_like_a_shell_would() {
        let r = CodeRunRequest {
            code: "print(1)".into(),
            language: Some("python".into()),
            argv: None,
            envs: Some(HashMap::from([("PATH".to_string(), "/nonexistent".to_string())])),
            timeout: None,
        };
        let out = code_run(Path::new("/"), r).await.expect("answers");
        assert_eq!(out.exit_code, NOT_FOUND_EXIT);
        assert!(out.result.contains("python3"), "{}", out.result);
    }

    #[tokio::test]
    async fn code_run_runs_python_with_arguments_when_python3_is_installed() {
        if which("python3", std::env::var_os("PATH").as_deref()).is_none() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let r = CodeRunRequest {
            code: "import sys\nprint('args', sys.argv[1:])\nsys.exit(4)".into(),
            language: Some("python".into()),
            argv: Some(vec!["a".into(), "b c".into()]),
            envs: None,
            timeout: Some(20),
        };
        let out = code_run(Path::new("/"), r).await.expect("runs");
        assert_eq!(out, ExecuteResponse { exit_code: 4, result: "args ['a', 'b c']\n".into() });
    }
}
