//! HTTP only: routes, extractors, auth middleware and the error mapping. Each handler
//! extracts, calls one service method and returns its typed answer.

mod builds;
mod docker_registry;
mod error;
mod extract;
mod keys;
mod nodes;
mod object_storage;
mod preview;
mod quotas;
mod registry_push;
mod sandboxes;
mod snapshots;
mod system;
mod unsupported;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, envelope};

use crate::state::AppState;

/// The whole HTTP application: `/api/...` (authenticated except health) and a 404 envelope
/// for everything else.
pub fn app(state: AppState) -> Router {
    let authed = Router::new()
        .merge(snapshots::router())
        .merge(keys::router())
        .merge(quotas::router())
        .merge(nodes::router())
        .merge(docker_registry::router())
        .merge(object_storage::router())
        .merge(registry_push::router())
        .merge(sandboxes::router().route_layer(middleware::from_fn_with_state(state.clone(), crate::forward::to_owner)))
        .merge(preview::router())
        .merge(builds::router())
        .merge(system::authed_router())
        .merge(unsupported::router())
        .merge(crate::dashboard::api_router())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let api = Router::new().merge(system::public_router()).merge(authed);
    let toolbox = sandboxes::toolbox_router()
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::forward::to_owner))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .nest("/api", api)
        .merge(toolbox)
        .merge(crate::registry::router())
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .layer(middleware::from_fn(add_path_to_errors))
        // A request forwarded by another node: its node token checked, its answer named.
        .layer(middleware::from_fn_with_state(state.clone(), crate::forward::accept))
        // Socket.IO events at `/api/socket.io/` (their own key check: `crate::events`).
        .layer(crate::events::layer(&state))
        // Preview host names and `/preview/…` are proxied before any route is matched.
        .layer(middleware::from_fn_with_state(state.clone(), preview::dispatch))
        // Everything but health waits until sandboxes are reconciled after a start.
        .layer(middleware::from_fn_with_state(state.clone(), crate::startup::wait_reconciled))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    error::envelope(
        StatusCode::NOT_FOUND,
        format!("cannot {} {}", req.method(), req.uri().path()),
        req.uri().path().to_string(),
    )
}

/// Resolves the bearer key to a [`Principal`](crate::service::keys::Principal) for the handlers.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match state.keys.authenticate(token).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Fills the `path` field of error envelopes produced by handlers.
async fn add_path_to_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return parts.into_response();
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) if v.get("path").is_some_and(|p| p == "") => {
            v["path"] = serde_json::Value::String(path);
            (parts, axum::Json(v)).into_response()
        }
        _ => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// `GET /api/health` without a key.
pub fn health_route() -> axum::routing::MethodRouter<AppState> {
    get(|| async { axum::Json(serde_json::json!({"status": "ok"})) })
}
