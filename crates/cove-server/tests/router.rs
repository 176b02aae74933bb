//! In-process tests of the HTTP layer: the router driven with `oneshot`, no sockets, a
//! temporary data directory. Pulls here target a closed loopback port, so they fail fast.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cove_server::{api, prepare};

mod common;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "router-test-key";

/// The tests share one bridge, whose address the server's DNS forwarder binds: one server at
/// a time.
static ONE_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a test holds while it uses its server: the data dir, the forwarder, the turn.
struct Held {
    _dir: tempfile::TempDir,
    _dns: cove_server::dns::Forwarder,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// The bridge of this file's servers.
const BRIDGE: &str = "covert0";

impl Drop for Held {
    /// Runs while the turn is still held, before the next test's server makes them again.
    fn drop(&mut self) {
        common::remove_bridge(BRIDGE);
    }
}

async fn app() -> (Held, axum::Router) {
    let turn = ONE_SERVER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // These tests start no sandbox; the runtime only needs valid settings and a bridge of its
    // own (shared by the tests in this file).
    let net = common::Plumbing {
        bridge: BRIDGE,
        cidr: "10.214.7.0/24",
        cgroup_parent: "/cove-router-test",
        name_prefix: "cvrt",
    };
    let cfg = common::server_config(dir.path(), KEY, net);
    let p = prepare(&cfg).await.unwrap();
    (Held { _dir: dir, _dns: p.dns, _turn: turn }, api::app(p.state))
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(body.map_or(Body::empty(), |b| Body::from(b.to_string()))).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    assert_eq!(ctype.as_deref(), Some("application/json"), "every body is JSON");
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_missing_key_gets_a_401_in_the_daytona_envelope_with_the_full_path() {
    let (_d, app) = app().await;
    let (st, body) = call(&app, "GET", "/api/snapshots", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["statusCode"], 401);
    assert_eq!(body["error"], "Unauthorized");
    assert_eq!(body["path"], "/api/snapshots");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn create_answers_200_pending_with_the_seed_defaults() {
    let (_d, app) = app().await;
    let req = json!({"name": "s", "imageName": "127.0.0.1:1/x/y:1.0"});
    let (st, body) = call(&app, "POST", "/api/snapshots", Some(req), Some(KEY)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(
        (body["cpu"].as_i64(), body["mem"].as_i64(), body["disk"].as_i64(), body["gpu"].as_i64()),
        (Some(1), Some(1), Some(3), Some(0))
    );
    assert_eq!(body["regionIds"], json!(["us"]));
    assert_eq!(body["general"], false);
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn a_duplicate_name_is_a_409_naming_the_name() {
    let (_d, app) = app().await;
    let req = json!({"name": "dup", "imageName": "127.0.0.1:1/x/y:1.0"});
    assert_eq!(call(&app, "POST", "/api/snapshots", Some(req.clone()), Some(KEY)).await.0, StatusCode::OK);
    let (st, body) = call(&app, "POST", "/api/snapshots", Some(req), Some(KEY)).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(body["message"], "snapshot with name \"dup\" already exists for this organization");
}

#[tokio::test]
async fn a_failed_pull_ends_in_error_with_a_reason_and_can_be_deleted() {
    let (_d, app) = app().await;
    let req = json!({"name": "unreachable", "imageName": "127.0.0.1:1/x/y:1.0"});
    let (_, created) = call(&app, "POST", "/api/snapshots", Some(req), Some(KEY)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut body = Value::Null;
    for _ in 0..200 {
        body = call(&app, "GET", &format!("/api/snapshots/{id}"), None, Some(KEY)).await.1;
        if body["state"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body["state"], "error", "{body}");
    assert!(body["errorReason"].as_str().unwrap().contains("cannot reach"), "{body}");
    let (st, _) = call(&app, "POST", &format!("/api/snapshots/{id}/deactivate"), None, Some(KEY)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, "DELETE", &format!("/api/snapshots/{id}"), None, Some(KEY)).await.0, StatusCode::OK);
    assert_eq!(call(&app, "GET", &format!("/api/snapshots/{id}"), None, Some(KEY)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_are_a_json_404_and_health_needs_no_key() {
    let (_d, app) = app().await;
    let (st, body) = call(&app, "GET", "/api/no-such-route/", None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body["statusCode"], 404);
    // The SDKs' event gateway is served (engine.io refuses a handshake without its parameters).
    let (st, _) = call(&app, "GET", "/api/socket.io/", None, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, "GET", "/api/health", None, None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn create_fields_the_server_does_not_honour_and_unknown_keys_are_refused_by_name() {
    let (_d, app) = app().await;
    for (field, value) in [
        ("outboundProxyUrl", json!("http://proxy:3128")),
        ("volumes", json!([{"volumeId": "v", "mountPath": "/data"}])),
        ("secrets", json!([{"TOKEN": "s"}])),
        ("kvm", json!(true)),
        ("ttlMinutes", json!(5)),
        ("notAField", json!(1)),
    ] {
        let mut req = json!({"snapshot": "x"});
        req[field] = value;
        let (st, body) = call(&app, "POST", "/api/sandbox", Some(req), Some(KEY)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{field}: {body}");
    }
    let both = json!({"snapshot": "x", "networkBlockAll": true, "networkAllowList": "198.51.100.0/24"});
    let (st, body) = call(&app, "POST", "/api/sandbox", Some(both), Some(KEY)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("networkBlockAll") && msg.contains("networkAllowList"), "{msg}");
    let bad = json!({"snapshot": "x", "networkAllowList": "10.0.0.0/33"});
    let (st, body) = call(&app, "POST", "/api/sandbox", Some(bad), Some(KEY)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("10.0.0.0/33"), "{body}");
}

#[tokio::test]
async fn docker_registries_are_created_with_201_never_show_their_password_and_are_org_scoped() {
    let (_d, app) = app().await;
    let body = json!({"name": "r", "url": "https://registry.example.com/", "username": "u", "password": "hunter2"});
    let (st, created) = call(&app, "POST", "/api/docker-registry", Some(body), Some(KEY)).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["url"], "registry.example.com");
    assert_eq!(created["registryType"], "organization");
    assert!(!created.to_string().contains("hunter2"), "{created}");
    let id = created["id"].as_str().unwrap();
    let (st, org) = call(&app, "POST", "/api/organizations", Some(json!({"name": "other"})), Some(KEY)).await;
    assert_eq!(st, StatusCode::OK, "{org}");
    let other = org["apiKey"]["value"].as_str().unwrap();
    let path = format!("/api/docker-registry/{id}");
    assert_eq!(call(&app, "GET", &path, None, Some(other)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "DELETE", &path, None, Some(other)).await.0, StatusCode::NOT_FOUND);
    let (st, missing) = call(
        &app,
        "POST",
        "/api/docker-registry",
        Some(json!({"name": "x", "url": "x.io", "username": "u"})),
        Some(KEY),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(missing["message"].as_str().unwrap().contains("password is required"), "{missing}");
    assert_eq!(call(&app, "DELETE", &path, None, Some(KEY)).await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&app, "GET", &path, None, Some(KEY)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_daytona_route_cove_does_not_serve_is_a_501_naming_it_after_the_key_check() {
    let (_d, app) = app().await;
    let (st, body) = call(&app, "POST", "/api/sandbox/some-id/resize", Some(json!({"cpu": 2})), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    let (st, _) = call(&app, "GET", "/api/volumes", None, Some("not-a-key")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = call(&app, "POST", "/api/sandbox/some-id/resize", Some(json!({"cpu": 2})), Some(KEY)).await;
    assert_eq!(st, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["path"], "/api/sandbox/some-id/resize");
    assert!(
        body["message"].as_str().unwrap().starts_with("sandbox resize (Sandbox.resize) is not supported"),
        "{body}"
    );
    let (st, body) = call(&app, "GET", "/api/volumes/by-name/data", None, Some(KEY)).await;
    assert_eq!(st, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("volumes"), "{body}");
    // Routes Cove serves beside them are untouched.
    let (st, _) = call(&app, "GET", "/api/sandbox/no-such-sandbox", None, Some(KEY)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root_next_to_an_unchanged_api() {
    let (_d, app) = app().await;
    let get = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();
    let page = app.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self';"));
    let js = app.clone().oneshot(get("/dashboard/assets/app.js")).await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let missing = app.clone().oneshot(get("/dashboard/assets/missing.js")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // The dashboard's own API sits behind the key check; the rest of the API is as before.
    let (st, _) = call(&app, "GET", "/api/dashboard/whoami", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, me) = call(&app, "GET", "/api/dashboard/whoami", None, Some(KEY)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["admin"], true);
    let (st, _) = call(&app, "POST", "/api/dashboard/terminal-token/no-such-sandbox", None, Some(KEY)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&app, "GET", "/api/snapshots", None, Some(KEY)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&app, "GET", "/no-such-page", None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn node_endpoints_answer_a_member_key_403_and_an_admin_key_on_a_single_node_server_400_naming_the_flag() {
    let (_d, app) = app().await;
    let (st, created) = call(&app, "POST", "/api/api-keys", Some(json!({"name": "member"})), Some(KEY)).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    let member = created["value"].as_str().unwrap().to_string();
    for (method, path) in [("GET", "/api/nodes"), ("POST", "/api/nodes/x/drain"), ("POST", "/api/nodes/x/undrain")] {
        let (st, body) = call(&app, method, path, None, Some(&member)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("only an admin API key"), "{body}");
        let (st, body) = call(&app, method, path, None, Some(KEY)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("nodes need --database-url"), "{body}");
        assert_eq!(call(&app, method, path, None, None).await.0, StatusCode::UNAUTHORIZED);
    }
}
