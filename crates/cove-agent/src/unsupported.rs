//! Toolbox paths of Daytona's daemon this agent does not serve, refused by name.
//!
//! Contract: [`fallback`] is the router's fallback, so it sees only requests no route matched.
//! A path under one of [`UNSUPPORTED`]'s prefixes (a whole segment: `/computeruse` and
//! `/computeruse/…`, never `/computerusefoo`) answers **501** in the toolbox envelope with a
//! message naming the feature and the SDK methods behind it; any other path stays a 404 naming
//! the method and path. Nothing is read from the body and nothing runs.

use axum::extract::Request;

use crate::error::{ApiError, ErrorKind};

/// `(path prefix, feature)` for each toolbox feature the agent does not implement.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "/computeruse",
        "computer use (sandbox.computer_use: mouse, keyboard, screenshots, display, recordings, accessibility; \
         it needs a desktop session Cove's sandboxes do not run)",
    ),
    ("/system/metrics", "live sandbox metrics (Sandbox.get_metrics_latest)"),
    ("/env", "changing a running sandbox's environment (Sandbox.update_env)"),
    ("/port", "port detection (the toolbox's /port routes; preview links need none)"),
    ("/init", "toolbox initialisation (/init, a route of Daytona's runner)"),
];

/// The feature `path` belongs to, if it is one the agent refuses.
pub fn feature(path: &str) -> Option<&'static str> {
    UNSUPPORTED.iter().find_map(|(prefix, feature)| {
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(*feature)
    })
}

/// The router's fallback: 501 naming an unsupported feature, else 404.
pub async fn fallback(req: Request) -> ApiError {
    let path = req.uri().path();
    match feature(path) {
        Some(feature) => {
            tracing::info!(method = %req.method(), path, feature, "refused an unsupported toolbox route");
            ApiError::new(
                ErrorKind::Unimplemented,
                format!(
                    "{feature} is not supported by this server (Cove); the request was refused rather than \
                     answered as if it had worked"
                ),
            )
        }
        None => ApiError::new(ErrorKind::NotFound, format!("no toolbox endpoint {} {}", req.method(), path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computer_use_paths_of_every_depth_name_computer_use() {
        for p in
            ["/computeruse", "/computeruse/start", "/computeruse/mouse/click", "/computeruse/recordings/x/download"]
        {
            assert!(feature(p).unwrap().starts_with("computer use"), "{p}");
        }
    }

    async fn call(method: &str, uri: &str) -> (axum::http::StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let app = crate::server::app(crate::server::AppState::new(crate::server::test_config(dir.path())));
        let req =
            axum::http::Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).expect("request");
        let resp = app.oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&body).expect("json envelope"))
    }

    #[tokio::test]
    async fn the_router_answers_computer_use_with_501_and_other_unknown_paths_with_404() {
        let (status, body) = call("POST", "/computeruse/mouse/click").await;
        assert_eq!(status, 501);
        assert_eq!(body["statusCode"], 501);
        assert_eq!(body["path"], "/computeruse/mouse/click");
        let msg = body["message"].as_str().expect("message");
        assert!(msg.starts_with("computer use (sandbox.computer_use"), "{msg}");
        assert!(msg.contains("not supported by this server (Cove)"), "{msg}");
        let (status, body) = call("GET", "/system/metrics").await;
        assert_eq!(status, 501);
        assert!(body["message"].as_str().expect("message").contains("get_metrics_latest"));
        let (status, body) = call("GET", "/no/such/thing").await;
        assert_eq!(status, 404);
        assert_eq!(body["message"], "no toolbox endpoint GET /no/such/thing");
    }

    #[test]
    fn a_prefix_matches_whole_segments_only() {
        assert_eq!(feature("/computerusefoo"), None);
        assert_eq!(feature("/environment"), None);
        assert_eq!(feature("/ports"), None);
        assert!(feature("/port/3000/in-use").is_some());
        assert!(feature("/env").unwrap().contains("update_env"));
        assert!(feature("/system/metrics").unwrap().contains("get_metrics_latest"));
        assert_eq!(feature("/files/nope"), None);
    }
}
