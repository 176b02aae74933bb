//! Two real nodes on one PostgreSQL database (the throw-away cluster of
//! `store::testing`, feature `test-support`), each serving on a loopback port with its own
//! data dir, bridge, CIDR, cgroup parent, runc root and name prefix: a verb for a sandbox
//! one node holds, sent to the other, is forwarded (`crate::forward`). The sandboxes are rows
//! written through the store (no container runs): the verbs used (stop of a stopped sandbox,
//! the toolbox of a stopped one) answer without one. The upgrade test registers a stand-in
//! owner, a plain socket, to see exactly what a forwarded request carries.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Method;
use cove_server::config::DatabaseUrl;
use cove_server::forward::{NODE_HEADER, TOKEN_HEADER};
use cove_server::store::testing::fresh_database;
use cove_server::store::{SandboxRecord, Store};
use cove_server::{AppState, ServerConfig, api, prepare};
use cove_types::SandboxState;
use serde_json::Value;

mod common;

const KEY: &str = "forward-test-key";

/// The tests share two bridges: one installation at a time.
static ONE_INSTALLATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One serving node.
struct Node {
    id: String,
    url: String,
    state: AppState,
    bridge: String,
    serving: tokio::task::JoinHandle<()>,
    _dns: cove_server::dns::Forwarder,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    /// Stops serving and takes down the node's bridge and nftables tables (no sandbox runs).
    fn drop(&mut self) {
        self.serving.abort();
        common::remove_bridge(&self.bridge);
    }
}

/// Node `n` (0 or 1) of the installation on `db`, serving.
async fn node(db: &DatabaseUrl, n: u8) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bridge = format!("covefw{n}");
    let (cidr, cgroup, prefix) =
        (format!("10.214.{}.0/24", 20 + n), format!("/cove-forward-test-{n}"), format!("cvf{n}"));
    let net = common::Plumbing { bridge: &bridge, cidr: &cidr, cgroup_parent: &cgroup, name_prefix: &prefix };
    let cfg = ServerConfig {
        listen: listener.local_addr().unwrap(),
        regions: vec!["us".into()],
        public_url: url.clone(),
        database: Some(db.clone()),
        // No node is marked lost behind the tests' backs; they mark one themselves.
        node_timing: cove_server::service::nodes::NodeTiming {
            heartbeat: Duration::from_secs(3600),
            lost_after: Duration::from_secs(7200),
        },
        node_address: Some(url.clone()),
        ..common::server_config(dir.path(), KEY, net)
    };
    let p = prepare(&cfg).await.unwrap();
    let id = p.state.nodes.as_ref().unwrap().id().to_string();
    let app = api::app(p.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Node { id, url, state: p.state, bridge, serving, _dns: p.dns, _dir: dir }
}

/// Two nodes on a fresh database.
async fn installation() -> (tokio::sync::MutexGuard<'static, ()>, Node, Node) {
    let turn = ONE_INSTALLATION.lock().await;
    let db = fresh_database().await;
    let a = node(&db, 0).await;
    let b = node(&db, 1).await;
    // Rows written before a node's start-up reconciliation ends would be reconciled with
    // what runs (nothing): let it finish first.
    for n in [&a, &b] {
        n.state.startup.wait(Duration::from_secs(30)).await.unwrap();
    }
    (turn, a, b)
}

/// A stopped sandbox row on `node`, in the bootstrap key's organization.
async fn sandbox_on(node: &Node, id: &str) {
    sandbox_on_node(&node.state.store, &node.id, id).await;
}

/// A stopped sandbox row on the node `node_id`, in the bootstrap key's organization.
async fn sandbox_on_node(store: &std::sync::Arc<dyn Store>, node_id: &str, id: &str) {
    let org = store.first_org().await.unwrap().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let rec = SandboxRecord {
        name: format!("name-{id}"),
        image_digest: "sha256:00".into(),
        mem: 1,
        disk: 1,
        desired_state: "stopped".into(),
        // Not due for archiving (a lifecycle sweep would start one).
        auto_archive: 7 * 24 * 60,
        created_at: now,
        updated_at: now,
        node_id: Some(node_id.to_string()),
        ..cove_server::store::testing::sandbox(id, &org.id, SandboxState::Stopped)
    };
    store.insert_sandbox(&rec).await.unwrap();
}

/// A request's status, `X-Cove-Node` and JSON body.
async fn send(
    method: Method,
    url: String,
    key: &str,
    token: Option<String>,
) -> (reqwest::StatusCode, Option<String>, Value) {
    let mut req = reqwest::Client::new().request(method, url).bearer_auth(key);
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER.as_str(), t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let node = resp.headers().get(NODE_HEADER.as_str()).map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, node, body)
}

/// The installation's node-token secret, as a node holds it.
async fn secret(store: &std::sync::Arc<dyn Store>) -> Vec<u8> {
    hex::decode(store.installation_secret("node-token", "unused").await.unwrap()).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_verb_for_a_sandbox_of_another_node_sent_to_any_node_is_answered_by_the_node_that_holds_it() {
    let (_turn, a, b) = installation().await;
    sandbox_on(&b, "sb-on-b").await;
    sandbox_on(&a, "sb-on-a").await;

    for path in ["/api/sandbox/sb-on-b/stop", "/api/sandbox/name-sb-on-b/stop"] {
        let (st, answered_by, body) = send(Method::POST, format!("{}{path}", a.url), KEY, None).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(answered_by.as_deref(), Some(b.id.as_str()), "answered by the owner, through A");
        assert_eq!(body["id"], "sb-on-b");
        assert_eq!(body["state"], "stopped");
    }
    // The toolbox too: B answers (the sandbox is stopped, which B's handler says).
    let (st, answered_by, body) = send(Method::GET, format!("{}/toolbox/sb-on-b/version", a.url), KEY, None).await;
    assert_eq!(answered_by.as_deref(), Some(b.id.as_str()), "{st} {body}");
    assert_eq!(st, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("it is stopped"), "{body}");
    // A body goes through: B's handler reads it and names what is wrong in it.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/sandbox/sb-on-b/network-settings", a.url))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "networkAllowList": "not-a-cidr" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get(NODE_HEADER.as_str()).unwrap().to_str().unwrap(), b.id);
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("not-a-cidr"), "{body}");
    // A's own sandbox, and reads of B's, are answered by A itself.
    let (st, answered_by, _) = send(Method::POST, format!("{}/api/sandbox/sb-on-a/stop", a.url), KEY, None).await;
    assert_eq!((st.as_u16(), answered_by), (200, None));
    let (st, answered_by, body) = send(Method::GET, format!("{}/api/sandbox/sb-on-b", a.url), KEY, None).await;
    assert_eq!((st.as_u16(), answered_by), (200, None), "{body}");
    // And a bad key never leaves A.
    let (st, answered_by, _) = send(Method::POST, format!("{}/api/sandbox/sb-on-b/stop", a.url), "bad", None).await;
    assert_eq!((st.as_u16(), answered_by), (401, None));
}

#[tokio::test]
async fn only_nodes_of_the_installation_can_forward_and_the_owner_checks_the_callers_key_itself() {
    let (_turn, a, b) = installation().await;
    sandbox_on(&b, "sb-on-b").await;
    let path = "/api/sandbox/sb-on-b/stop";
    let url = format!("{}{path}", b.url);
    let secret = secret(&a.state.store).await;
    let sign = |at: i64| cove_server::forward::sign(&secret, &a.id, &Method::POST, path, at);

    let forged = cove_server::forward::sign(b"not the installation secret", &a.id, &Method::POST, path, now());
    let (st, _, body) = send(Method::POST, url.clone(), KEY, Some(forged)).await;
    assert_eq!(st, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("node token refused: bad signature"), "{body}");

    let (st, _, body) = send(Method::POST, url.clone(), KEY, Some(sign(now() - 120))).await;
    assert_eq!(st, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");

    // A valid token vouches for the sending node, never for the caller: B checks the key.
    let (st, answered_by, body) = send(Method::POST, url.clone(), "not-a-key", Some(sign(now()))).await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(answered_by.as_deref(), Some(b.id.as_str()));
    assert!(!body["message"].as_str().unwrap().contains("node token"), "{body}");

    let (st, answered_by, body) = send(Method::POST, url, KEY, Some(sign(now()))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(answered_by.as_deref(), Some(b.id.as_str()));
}

#[tokio::test]
async fn a_forwarded_request_is_not_forwarded_again_and_a_lost_owner_gets_a_503_naming_it() {
    let (_turn, a, b) = installation().await;
    sandbox_on(&a, "sb-on-a").await;
    sandbox_on(&b, "sb-on-b").await;

    // A request forwarded to B for A's sandbox: B does not send it on.
    let path = "/api/sandbox/sb-on-a/stop";
    let token = cove_server::forward::sign(&secret(&b.state.store).await, &a.id, &Method::POST, path, now());
    let (st, _, body) = send(Method::POST, format!("{}{path}", b.url), KEY, Some(token)).await;
    assert_eq!(st, 409, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("not forwarded again") && msg.contains(&a.id) && msg.contains(&b.id), "{msg}");

    assert!(a.state.store.mark_node_lost_if(&b.id, i64::MAX).await.unwrap());
    let (st, answered_by, body) = send(Method::POST, format!("{}/api/sandbox/sb-on-b/stop", a.url), KEY, None).await;
    assert_eq!((st.as_u16(), answered_by), (503, None), "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(&b.id) && msg.contains("lost"), "{msg}");
}

/// A stand-in for a node at `listener`: reads one request head, hands it over, answers 101
/// and then echoes what comes, as an upgraded toolbox connection would.
async fn echoing_owner(listener: tokio::net::TcpListener, head_tx: tokio::sync::oneshot::Sender<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    head_tx.send(String::from_utf8(head).unwrap()).unwrap();
    s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return;
        }
        s.write_all(&buf[..n]).await.unwrap();
    }
}

#[tokio::test]
async fn a_toolbox_upgrade_is_forwarded_with_the_callers_key_and_a_node_token_and_bridged_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_turn, a, b) = installation().await;
    // The owner here is a stand-in registered as a node, to see exactly what arrives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let owner_url = format!("http://{}", listener.local_addr().unwrap());
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(echoing_owner(listener, head_tx));
    let dir = tempfile::tempdir().unwrap();
    let mut stand_in =
        cove_server::service::nodes::this_machine("stand-in".into(), "us".into(), owner_url, dir.path(), 0);
    stand_in.heartbeat_at = chrono::Utc::now().timestamp_millis();
    a.state.store.register_node(&stand_in).await.unwrap();
    sandbox_on_node(&b.state.store, "stand-in", "sb-on-stand-in").await;

    let path = "/toolbox/sb-on-stand-in/process/session/s1/command/c1/logs?follow=true";
    let mut conn = tokio::net::TcpStream::connect(a.url.trim_start_matches("http://")).await.unwrap();
    conn.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {KEY}\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");

    let head = head_rx.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with(&format!("get {path} http/1.1\r\n")), "{head}");
    assert!(head.contains(&format!("authorization: bearer {}", KEY.to_ascii_lowercase())), "{head}");
    let token = head.lines().find_map(|l| l.strip_prefix("x-cove-node-token: ")).expect("a node token").trim();
    let secret = secret(&a.state.store).await;
    // The head was lower-cased above; node ids and hex are lower case already.
    assert_eq!(cove_server::forward::verify(&secret, token, &Method::GET, path, now()).unwrap(), a.id);

    conn.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping");
}
