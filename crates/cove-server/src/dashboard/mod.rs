//! The web dashboard: a small single-page app (plain ES modules, no framework, no build step)
//! embedded in the binary and served on the API listener.
//!
//! Contract:
//! - `GET /` (and `/dashboard`, `/dashboard/`) → `index.html`; `GET /dashboard/assets/{file}` →
//!   one of the embedded files of `assets/`, with its content type; anything else there → 404.
//!   Pages are hash routes (`/#/snapshots`), so no other path serves the page.
//! - Every answer carries a strict `Content-Security-Policy` (scripts, connections, images and
//!   fonts from this origin only; no inline script; styles from this origin plus `<style>`
//!   elements bearing the page's per-response nonce, which only the terminal emulator creates),
//!   `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.
//! - The page calls `/api/...` and `/toolbox/...` with `Authorization: Bearer <key>`; the key is
//!   kept in the tab's `sessionStorage` only, never in a URL or `localStorage`.
//! - Terminals: a browser cannot set headers on a WebSocket, so
//!   `POST /api/dashboard/terminal-token/{sandbox}` (behind the key check) mints a random token
//!   good once, for 60 s, for that one sandbox of the caller's organization; the page offers it as
//!   the subprotocol `cove-terminal.<token>` on `GET /dashboard/terminal/{sandbox}/{session}`,
//!   which is bridged to the agent's `/process/pty/{session}/connect` with the token removed.
//! - `GET /api/dashboard/whoami` → `{organizationId, keyId, admin}` for the page's header and the
//!   ECR trust policy (the organization id is the External ID).

mod assets;
mod terminal;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::state::AppState;

pub use terminal::{TERMINAL_PROTOCOL_PREFIX, TOKEN_TTL};

/// The public part: the page, its assets and the terminal WebSocket (which checks its own
/// token). Merged at the root of the application.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(assets::index))
        .route("/dashboard", get(assets::index))
        .route("/dashboard/", get(assets::index))
        .route("/dashboard/assets/{*file}", get(assets::asset))
        .route("/dashboard/terminal/{id}/{session}", get(terminal::connect))
}

/// The part behind the key check, nested under `/api` with the other authenticated routes.
pub fn api_router() -> Router<AppState> {
    Router::new()
        .route("/dashboard/whoami", get(terminal::whoami))
        .route("/dashboard/terminal-token/{id}", post(terminal::mint))
}

/// The policy every dashboard answer carries; `nonce` allows the terminal's `<style>` elements.
fn csp(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// Adds the security headers to a dashboard answer.
fn secure(mut resp: Response, nonce: &str) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp(nonce)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

fn not_found(what: &str) -> Response {
    let err = crate::api::ApiError::new(cove_types::ErrorKind::NotFound, format!("no dashboard file {what:?}"));
    secure(err.into_response(), "none")
}

#[cfg(test)]
mod tests;
