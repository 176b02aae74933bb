//! Terminal tokens: what lets a browser's WebSocket (which cannot carry an `Authorization`
//! header) reach one sandbox's PTY session. A token is 32 random bytes kept only in this
//! process's memory with its grant (organization, key, sandbox, expiry); it is taken out of the
//! table by its first use, so it works once, for [`TOKEN_TTL`], for that sandbox only.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::{Extension, Json};
use cove_types::ErrorKind;

use crate::api::ApiError;
use crate::service::keys::Principal;
use crate::state::AppState;

/// How long a minted token may wait for its WebSocket.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// The subprotocol that carries a token: `cove-terminal.<64 hex digits>`.
pub const TERMINAL_PROTOCOL_PREFIX: &str = "cove-terminal.";
/// Unused tokens kept at most (a caller minting more is refused until some expire).
const MAX_OUTSTANDING: usize = 10_000;

#[derive(Debug, Clone)]
struct Grant {
    org_id: String,
    key_id: String,
    sandbox_id: String,
    expires: Instant,
}

fn table() -> std::sync::MutexGuard<'static, HashMap<String, Grant>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Grant>>> = OnceLock::new();
    TABLE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a grant for `sandbox_id` and returns its token.
fn issue(who: &Principal, sandbox_id: &str) -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::new(ErrorKind::Internal, format!("no randomness: {e}")))?;
    let token = hex::encode(raw);
    let now = Instant::now();
    let mut t = table();
    t.retain(|_, g| g.expires > now);
    if t.len() >= MAX_OUTSTANDING {
        return Err(ApiError::new(ErrorKind::Exhausted, "too many terminal tokens waiting: try again in a minute"));
    }
    let grant = Grant {
        org_id: who.org_id.clone(),
        key_id: who.key_id.clone(),
        sandbox_id: sandbox_id.to_string(),
        expires: now + TOKEN_TTL,
    };
    t.insert(token.clone(), grant);
    Ok(token)
}

/// Takes the grant of `token` (once) if it is for `sandbox_id` and not expired.
fn redeem(token: &str, sandbox_id: &str) -> Option<Grant> {
    let grant = table().remove(token)?;
    (grant.sandbox_id == sandbox_id && grant.expires > Instant::now()).then_some(grant)
}

/// `GET /api/dashboard/whoami`.
pub(super) async fn whoami(Extension(who): Extension<Principal>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "organizationId": who.org_id, "keyId": who.key_id, "admin": who.admin }))
}

/// `POST /api/dashboard/terminal-token/{id}` → `{token, sandboxId, expiresInSecs}`; the sandbox
/// must be the caller's.
pub(super) async fn mint(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sandbox = s.sandboxes.get(&who, &id).await?;
    let token = issue(&who, &sandbox.id)?;
    Ok(Json(serde_json::json!({
        "token": token,
        "sandboxId": sandbox.id,
        "expiresInSecs": TOKEN_TTL.as_secs(),
    })))
}

/// The token among the offered subprotocols, and the header without it.
fn split_protocols(offered: Option<&HeaderValue>) -> (Option<String>, Vec<String>) {
    let mut token = None;
    let mut rest = Vec::new();
    for p in offered.and_then(|v| v.to_str().ok()).unwrap_or("").split(',').map(str::trim) {
        match p.strip_prefix(TERMINAL_PROTOCOL_PREFIX) {
            Some(t) if token.is_none() => token = Some(t.to_string()),
            Some(_) => {}
            None if !p.is_empty() => rest.push(p.to_string()),
            None => {}
        }
    }
    (token, rest)
}

/// `GET /dashboard/terminal/{sandbox}/{session}` (WebSocket): the agent's PTY connection.
pub(super) async fn connect(
    State(s): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    // Checked before the token is spent on it.
    if !session.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || session.is_empty() {
        return Err(ApiError::new(ErrorKind::InvalidArgument, "a terminal session id is letters, digits, - and _"));
    }
    let denied = || ApiError::new(ErrorKind::Unauthenticated, "a terminal needs a fresh token for this sandbox");
    let (token, rest) = split_protocols(req.headers().get(header::SEC_WEBSOCKET_PROTOCOL));
    let grant = token.and_then(|t| redeem(&t, &id)).ok_or_else(denied)?;
    let who = Principal { org_id: grant.org_id, key_id: grant.key_id, admin: false };
    let agent = s.sandboxes.toolbox_agent(&who, &grant.sandbox_id).await?;
    // The token never reaches the sandbox.
    let headers = req.headers_mut();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let _active = s.sandboxes.lifecycle().begin_request(&agent.sandbox_id);
    crate::toolbox::forward(&agent, req, &format!("/process/pty/{session}/connect"))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, cove_types::error::chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(org: &str) -> Principal {
        Principal { org_id: org.into(), key_id: "k".into(), admin: false }
    }

    #[test]
    fn a_token_works_once_and_only_for_its_sandbox() {
        let t = issue(&who("org-a"), "sb-1").unwrap();
        assert!(redeem(&t, "sb-2").is_none(), "another sandbox");
        assert!(redeem(&t, "sb-1").is_none(), "a token tried on the wrong sandbox is spent");
        let t = issue(&who("org-a"), "sb-1").unwrap();
        let g = redeem(&t, "sb-1").unwrap();
        assert_eq!((g.org_id.as_str(), g.sandbox_id.as_str()), ("org-a", "sb-1"));
        assert!(redeem(&t, "sb-1").is_none(), "second use");
        assert!(redeem("not-a-token", "sb-1").is_none());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let t = issue(&who("org-a"), "sb-x").unwrap();
        table().get_mut(&t).unwrap().expires = Instant::now() - Duration::from_secs(1);
        assert!(redeem(&t, "sb-x").is_none());
    }

    #[test]
    fn the_token_is_taken_out_of_the_offered_subprotocols() {
        let v = HeaderValue::from_static("cove-terminal.abc, X-Daytona-Pty-Exit-Control");
        let (t, rest) = split_protocols(Some(&v));
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(rest, vec!["X-Daytona-Pty-Exit-Control".to_string()]);
        assert_eq!(split_protocols(None), (None, vec![]));
    }
}
