//! Daytona API routes Cove does not serve, answered with a clear refusal instead of a bare 404.
//!
//! Contract: every `(method, path)` in [`UNSUPPORTED`] is a route of Daytona's API that one of
//! the official SDKs (or Daytona's own runner and proxy) calls and Cove does not implement. It
//! answers **501 Not Implemented** in the SDKs' error envelope, with a message naming the
//! feature and the SDK methods behind it, e.g. "sandbox resize (Sandbox.resize) is not
//! supported by this server (Cove)". The routes are merged into the authenticated API, so a
//! missing or bad key still gets 401 first; nothing here reads the body or touches state. A path
//! not in the table stays a 404, and a route Cove serves never appears here (axum refuses to
//! build the API with one method of one path routed twice, which the router tests do).

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, on};

/// One route Cove does not implement.
#[derive(Debug, Clone)]
pub struct Unsupported {
    /// HTTP method.
    pub method: Method,
    /// Path below `/api`, in axum's syntax (parameters always `{id}` where a sandbox id or
    /// name sits, so the router never sees two names for one segment).
    pub path: &'static str,
    /// The feature, with the SDK methods that reach it.
    pub feature: &'static str,
}

const fn row(method: Method, path: &'static str, feature: &'static str) -> Unsupported {
    Unsupported { method, path, feature }
}

const FORK: &str = "sandbox forks (Sandbox.fork, Daytona.fork in TypeScript)";
const SSH: &str = "SSH access (Sandbox.create_ssh_access / revoke_ssh_access / validate_ssh_access)";
const TELEMETRY: &str = "sandbox telemetry (Sandbox.get_metrics, logs and traces)";
const SIGNING: &str = "signed file URLs (Sandbox.download_url / upload_url / rotate_signing_key)";
const SECRETS: &str = "organization secrets (Daytona.secret, Sandbox.update_secrets, the create field secrets)";
const VOLUMES: &str = "volumes (Daytona.volume, the create field volumes)";
const WARM_POOLS: &str = "warm pool management (Daytona.warm_pool; Cove keeps its own pool, see --warm-pool-size)";
const RUNNER: &str = "Daytona's runner and proxy routes (Cove runs sandboxes itself)";

/// Every Daytona route this server refuses by name.
pub const UNSUPPORTED: &[Unsupported] = &[
    row(Method::POST, "/sandbox/{id}/snapshot", "snapshots of a running sandbox (Sandbox.create_snapshot)"),
    row(Method::POST, "/sandbox/{id}/backup", "sandbox backups"),
    row(Method::POST, "/sandbox/{id}/fork", FORK),
    row(Method::GET, "/sandbox/{id}/forks", FORK),
    row(Method::GET, "/sandbox/{id}/ancestors", FORK),
    row(Method::GET, "/sandbox/{id}/parent", FORK),
    row(Method::POST, "/sandbox/{id}/ssh-access", SSH),
    row(Method::DELETE, "/sandbox/{id}/ssh-access", SSH),
    row(Method::GET, "/sandbox/ssh-access/validate", SSH),
    row(Method::POST, "/sandbox/{id}/resize", "sandbox resize (Sandbox.resize)"),
    row(Method::POST, "/sandbox/{id}/pause", "pausing a sandbox (Sandbox.pause)"),
    row(Method::POST, "/sandbox/{id}/recover", "recovering a sandbox (Sandbox.recover)"),
    row(Method::POST, "/sandbox/{id}/autopause/{interval}", "auto-pause (Sandbox.set_auto_pause_interval)"),
    row(Method::POST, "/sandbox/{id}/ttl/{interval}", "a sandbox time to live (Sandbox.set_ttl)"),
    row(Method::PUT, "/sandbox/{id}/secrets", SECRETS),
    row(Method::GET, "/sandbox/{id}/secrets", SECRETS),
    row(Method::GET, "/sandbox/{id}/telemetry/metrics", TELEMETRY),
    row(Method::GET, "/sandbox/{id}/telemetry/logs", TELEMETRY),
    row(Method::GET, "/sandbox/{id}/telemetry/traces", TELEMETRY),
    row(Method::GET, "/sandbox/{id}/telemetry/traces/{trace}", TELEMETRY),
    row(Method::GET, "/sandbox/{id}/signing-key", SIGNING),
    row(Method::POST, "/sandbox/{id}/signing-key/rotate", SIGNING),
    row(Method::GET, "/sandbox/{id}/organization", RUNNER),
    row(Method::GET, "/sandbox/{id}/region-quota", RUNNER),
    row(Method::PUT, "/sandbox/{id}/state", RUNNER),
    row(
        Method::GET,
        "/config",
        "the deployment configuration (GET /config, which Sandbox.get_metrics reads for an analytics API; \
         sandbox telemetry is not supported either)",
    ),
    row(Method::GET, "/volumes", VOLUMES),
    row(Method::POST, "/volumes", VOLUMES),
    row(Method::GET, "/volumes/{id}", VOLUMES),
    row(Method::DELETE, "/volumes/{id}", VOLUMES),
    row(Method::GET, "/volumes/by-name/{id}", VOLUMES),
    row(Method::GET, "/secret", SECRETS),
    row(Method::POST, "/secret", SECRETS),
    row(Method::GET, "/secret/paginated", SECRETS),
    row(Method::GET, "/secret/{id}", SECRETS),
    row(Method::PATCH, "/secret/{id}", SECRETS),
    row(Method::DELETE, "/secret/{id}", SECRETS),
    row(Method::GET, "/warm-pools", WARM_POOLS),
    row(Method::POST, "/warm-pools", WARM_POOLS),
    row(Method::PATCH, "/warm-pools/{id}", WARM_POOLS),
    row(Method::DELETE, "/warm-pools/{id}", WARM_POOLS),
];

/// The refusal for one feature (the envelope's `path` is filled in by the API's middleware).
pub fn refusal(feature: &str) -> Response {
    super::error::envelope(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{feature} is not supported by this server (Cove); the request was refused rather than \
             answered as if it had worked"
        ),
        String::new(),
    )
}

/// The routes of [`UNSUPPORTED`], each answering [`refusal`].
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    UNSUPPORTED.iter().fold(Router::new(), |r, u| {
        let feature = u.feature;
        let filter = MethodFilter::try_from(u.method.clone()).expect("the table holds only standard methods");
        r.route(
            u.path,
            on(filter, move |req: axum::extract::Request| async move {
                tracing::info!(method = %req.method(), path = %req.uri().path(), feature, "refused an unsupported route");
                refusal(feature)
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(app: &Router, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        let req = axum::http::Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// A concrete path for a table path: every parameter filled in.
    fn concrete(path: &str) -> String {
        path.split('/').map(|seg| if seg.starts_with('{') { "x1" } else { seg }).collect::<Vec<_>>().join("/")
    }

    #[tokio::test]
    async fn every_row_answers_501_in_the_envelope_naming_its_feature() {
        let app: Router = router();
        for u in UNSUPPORTED {
            let path = concrete(u.path);
            let (status, body) = call(&app, u.method.clone(), &path).await;
            assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{} {path}", u.method);
            assert_eq!(body["statusCode"], 501);
            assert_eq!(body["code"], "NOT_IMPLEMENTED");
            let msg = body["message"].as_str().unwrap();
            assert!(msg.starts_with(u.feature), "{msg}");
            assert!(msg.contains("not supported by this server (Cove)"), "{msg}");
        }
    }

    #[tokio::test]
    async fn resize_names_resize_and_a_path_not_in_the_table_is_not_claimed() {
        let app: Router = router();
        let (status, body) = call(&app, Method::POST, "/sandbox/abc/resize").await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(body["message"].as_str().unwrap().starts_with("sandbox resize (Sandbox.resize)"));
        let (status, _) = call(&app, Method::POST, "/sandbox/abc/teleport").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_table_has_no_duplicate_routes() {
        let mut seen = std::collections::HashSet::new();
        for u in UNSUPPORTED {
            assert!(seen.insert((u.method.clone(), u.path)), "{} {} twice", u.method, u.path);
        }
    }
}
