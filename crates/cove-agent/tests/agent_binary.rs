//! Starts the real `cove-agent` binary and talks HTTP/1.1 to it over its unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    work: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the agent (optionally through `wrapper`, e.g. `unshare` to make it PID 1) and waits
/// for its socket.
async fn start(wrapper: &[&str], entrypoint: &[&str]) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/toolbox.sock");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let bin = env!("CARGO_BIN_EXE_cove-agent");
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(bin);
    argv.extend_from_slice(entrypoint);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env("COVE_TOOLBOX_SOCKET", &socket)
        .env("COVE_TOOLBOX_PORT", "0")
        .env("COVE_WORKDIR", &work)
        .env("COVE_AGENT_LOG", "debug")
        .stdin(Stdio::null());
    if entrypoint.is_empty() {
        cmd.env("COVE_NO_ENTRYPOINT", "1");
    }
    let child = cmd.spawn().expect("start cove-agent");
    let agent = Agent { child, socket, _dir: dir, work };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&agent.socket).await.is_err() {
        assert!(Instant::now() < deadline, "the agent never opened {}", agent.socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}

/// One request with `Connection: close`; returns the status and the (non-chunked) body.
async fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(socket).await.expect("connect");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    (status, body.to_string())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not json ({e}): {s}"))
}

#[tokio::test]
async fn the_real_agent_serves_version_execute_and_sessions_over_its_unix_socket() {
    let agent = start(&[], &[]).await;
    let (status, body) = http(&agent.socket, "GET", "/version", None).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["version"], env!("CARGO_PKG_VERSION"));

    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&agent.socket).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o660);

    let (status, body) =
        http(&agent.socket, "POST", "/process/execute", Some(r#"{"command":"pwd; echo e >&2; exit 7"}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body), serde_json::json!({"exitCode": 7, "result": format!("{}\ne\n", agent.work.display())}));

    let (status, _) = http(&agent.socket, "POST", "/process/session", Some(r#"{"sessionId":"s"}"#)).await;
    assert_eq!(status, 201);
    http(&agent.socket, "POST", "/process/session/s/exec", Some(r#"{"command":"export A=1; cd /"}"#)).await;
    let (status, body) =
        http(&agent.socket, "POST", "/process/session/s/exec", Some(r#"{"command":"echo $A $PWD"}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["stdout"], "1 /\n");

    // The agent's own settings do not leak into commands.
    let (_, body) =
        http(&agent.socket, "POST", "/process/execute", Some(r#"{"command":"env | grep -c ^COVE_ || true"}"#)).await;
    assert_eq!(json(&body)["result"], "0\n");
}

#[tokio::test]
async fn the_real_agent_runs_its_entrypoint_and_exposes_its_logs() {
    let agent = start(&[], &["/bin/sh", "-c", "echo started; echo oops >&2; sleep 30"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(&agent.socket, "GET", "/process/session/entrypoint/logs", None).await;
        assert_eq!(status, 200);
        let v = json(&body);
        if v["stdout"] == "started\n" && v["stderr"] == "oops\n" {
            break;
        }
        assert!(Instant::now() < deadline, "entrypoint logs never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = http(&agent.socket, "GET", "/process/session/entrypoint", None).await;
    let v = json(&body);
    assert_eq!(v["sessionId"], "entrypoint");
    assert!(v["commands"][0].get("exitCode").is_none(), "still running: {v}");
}

/// As PID 1 of a new PID namespace (needs root and util-linux `unshare`): orphans are reaped,
/// and SIGTERM stops the agent and its entrypoint.
#[tokio::test]
async fn as_pid_1_the_agent_reaps_orphans_and_stops_on_sigterm() {
    let unshare = ["/usr/bin/unshare", "/bin/unshare"].into_iter().find(|p| Path::new(p).exists());
    let is_root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    let Some(unshare) = unshare.filter(|_| is_root) else {
        eprintln!("skipped: needs root and unshare");
        return;
    };
    // --kill-child: if the test dies, the namespace goes with it.
    let mut agent = start(&[unshare, "--pid", "--fork", "--mount-proc", "--kill-child"], &["sleep", "1000"]).await;
    let (_, body) =
        http(&agent.socket, "POST", "/process/execute", Some(r#"{"command":"echo $PPID; cat /proc/1/comm"}"#)).await;
    assert_eq!(
        json(&body)["result"].as_str().map(|s| s.lines().last().map(str::to_string)),
        Some(Some("cove-agent".into()))
    );

    // Orphans: a double fork leaves a process whose parent has exited; PID 1 must reap it.
    let cmd = r#"{"command":"for i in 1 2 3 4 5; do (sleep 0.1 &) ; done; sleep 0.5; grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"}"#;
    let (_, body) = http(&agent.socket, "POST", "/process/execute", Some(cmd)).await;
    assert_eq!(json(&body)["result"].as_str().map(str::trim), Some("0"), "zombies left: {body}");

    // SIGTERM to the agent (the namespace's PID 1 as seen from outside is our child's child).
    let ns_init = std::fs::read_to_string(format!("/proc/{}/task/{}/children", agent.child.id(), agent.child.id()))
        .expect("children of unshare");
    let pid: i32 = ns_init.split_whitespace().next().and_then(|p| p.parse().ok()).expect("agent pid");
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = agent.child.try_wait().expect("wait") {
            assert!(status.success(), "agent exited with {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
