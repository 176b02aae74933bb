//! Running the host tools this crate drives (`runc`, `ip`, `mount`, `mkfs.ext4`) and turning
//! their failures into errors that carry the command line and its stderr.

use std::ffi::OsStr;
use std::process::Stdio;

/// A host command that could not be run or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (missing binary, permissions).
    #[error("start `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// The end of what it wrote to stderr (or stdout when stderr was empty).
        stderr: String,
    },
}

impl CommandError {
    /// The command's stderr (empty for a spawn failure).
    pub fn stderr(&self) -> &str {
        match self {
            Self::Spawn { .. } => "",
            Self::Failed { stderr, .. } => stderr,
        }
    }
}

fn render<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Keeps the last `max` bytes of a tool's message, on a char boundary, trimmed.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

/// Runs `program args…` with stdin from `/dev/null`, optionally feeding `input` on stdin
/// instead, and returns its stdout. Only for commands that exit by themselves and leave no
/// process holding the pipes (never `runc run -d`).
pub(crate) async fn run<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    input: Option<&str>,
) -> Result<String, CommandError> {
    use tokio::io::AsyncWriteExt;
    let command = render(program, args);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn { command: command.clone(), source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|source| CommandError::Spawn { command: command.clone(), source })?;
    }
    let out =
        child.wait_with_output().await.map_err(|source| CommandError::Spawn { command: command.clone(), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = if stderr.trim().is_empty() { stdout.as_str() } else { &stderr };
        return Err(CommandError::Failed { command, status: out.status.to_string(), stderr: tail(msg, 2000) });
    }
    Ok(stdout)
}
