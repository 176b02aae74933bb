//! Live events for the SDKs: Daytona's notification gateway over Socket.IO.
//!
//! Contract:
//! - Served at `/api/socket.io/` on the API listener (engine.io v4, WebSocket or polling),
//!   namespace `/`. The handshake's `auth.token` is an API key, checked exactly as the REST
//!   API checks a bearer key; a missing, unknown or revoked key is refused (`connect_error`)
//!   and the socket never joins anything. An `organizationId` query parameter, when given,
//!   must be the key's organization (else refused naming it); `source` and `sdkVersion` are
//!   informational.
//! - A connected socket joins its key's organization room and receives only that
//!   organization's events; nothing a client sends is acted on.
//! - Events (names and payloads as Daytona's SDKs read them; DTOs are the REST API's):
//!   `sandbox.created` (SandboxDto), `sandbox.state.updated` ({sandbox, oldState, newState}),
//!   `sandbox.desired-state.updated` ({sandbox, oldDesiredState, newDesiredState}),
//!   `snapshot.created` (SnapshotDto), `snapshot.state.updated` ({snapshot, oldState,
//!   newState}) and `snapshot.removed` (the snapshot id). A deleted sandbox is reported as a
//!   state change to `destroyed`.
//! - The source is [`Store::changes`](crate::store::Store::changes): every committed write of a
//!   sandbox or snapshot row, whichever service made it, in commit order. Delivery is best
//!   effort (the SDKs poll as well): a hub that falls behind the store's channel skips what
//!   it missed and says so in the log.

use std::collections::HashMap;

use cove_types::SandboxState;
use cove_types::sandbox::SandboxDto;
use serde::Deserialize;
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use tokio::sync::broadcast::error::RecvError;

use crate::service::keys::KeyService;
use crate::state::AppState;
use crate::store::Change;

/// Where the SDKs look for the gateway (their API URL's path + `/socket.io/`).
pub const PATH: &str = "/api/socket.io";

/// Why a Socket.IO connection was refused (sent to the client as the `connect_error` message).
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// No `auth.token` in the handshake.
    #[error("authenticate the event connection: the handshake has no auth.token (an API key)")]
    MissingToken,
    /// The key is not a live API key.
    #[error("authenticate the event connection: the API key is not valid")]
    Unauthorized(#[source] crate::service::keys::KeyError),
    /// `organizationId` names another organization than the key's.
    #[error("authenticate the event connection: organizationId {asked} is not the API key's organization")]
    WrongOrganization {
        /// What the client asked for.
        asked: String,
    },
}

/// The handshake's `auth` object.
#[derive(Debug, Deserialize)]
struct Auth {
    token: Option<String>,
}

/// The organization a connected socket was admitted for (socket extension).
#[derive(Debug, Clone)]
struct Org(String);

/// Builds the Socket.IO layer for [`crate::api::app`] and starts the task relaying the
/// store's changes to it (when called inside a Tokio runtime).
pub fn layer(state: &AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder().req_path(PATH).with_state(state.keys.clone()).build_layer();
    io.ns("/", on_connect.with(admit));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(relay(io, state.clone()));
    }
    layer
}

/// Connect middleware: the key, then the organization asked for.
async fn admit(s: SocketRef, State(keys): State<KeyService>, TryData(auth): TryData<Auth>) -> Result<(), EventsError> {
    let token = auth.ok().and_then(|a| a.token).filter(|t| !t.is_empty()).ok_or(EventsError::MissingToken)?;
    let who = keys.authenticate(Some(&token)).await.map_err(EventsError::Unauthorized)?;
    let asked = s.req_parts().uri.query().and_then(|q| url_query_value(q, "organizationId").filter(|v| !v.is_empty()));
    if let Some(asked) = asked
        && asked != who.org_id
    {
        tracing::info!(key_id = %who.key_id, asked = %asked, "event connection refused: another organization");
        return Err(EventsError::WrongOrganization { asked });
    }
    s.extensions.insert(Org(who.org_id));
    Ok(())
}

async fn on_connect(s: SocketRef) {
    let Some(Org(org)) = s.extensions.get::<Org>() else {
        // Unreachable: `admit` runs first and stores it.
        s.disconnect().ok();
        return;
    };
    tracing::debug!(sid = %s.id, org_id = %org, "event connection admitted");
    s.join(room(&org));
}

fn room(org: &str) -> String {
    format!("org:{org}")
}

/// One query parameter, percent-decoded.
fn url_query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// What the relay remembers of each row it has seen: enough to name the old state and the
/// organization of a deleted row.
#[derive(Default)]
struct Seen {
    sandboxes: HashMap<String, SandboxDto>,
    snapshots: HashMap<String, (String, cove_types::SnapshotState)>,
}

/// Relays the store's changes to the organizations' rooms until the store goes away.
async fn relay(io: SocketIo, state: AppState) {
    let mut rx = state.store.changes();
    let mut seen = Seen::default();
    loop {
        let change = match rx.recv().await {
            Ok(c) => c,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event relay fell behind the store; SDKs fall back to polling");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        for (org, event, payload) in events_of(&state, &mut seen, change) {
            if let Err(e) = io.to(room(&org)).emit(event, &payload).await {
                tracing::debug!(event, org_id = %org, error = %e, "cannot emit event");
            }
        }
    }
}

/// The events one change makes: (organization, event name, payload).
fn events_of(state: &AppState, seen: &mut Seen, change: Change) -> Vec<(String, &'static str, serde_json::Value)> {
    let mut out = Vec::new();
    match change {
        Change::Sandbox { record, created, previous } => {
            let dto = state.sandboxes.dto(&record);
            let org = dto.organization_id.clone();
            let before = seen.sandboxes.insert(dto.id.clone(), dto.clone());
            let sandbox = serde_json::to_value(&dto).unwrap_or_default();
            if created {
                out.push((org, "sandbox.created", sandbox));
                return out;
            }
            let old_state = before.as_ref().map(|b| b.state).or(previous);
            if old_state != Some(dto.state) {
                out.push((
                    org.clone(),
                    "sandbox.state.updated",
                    json!({"sandbox": sandbox, "oldState": old_state, "newState": dto.state}),
                ));
            }
            if let Some(b) = before
                && b.desired_state != dto.desired_state
            {
                out.push((
                    org,
                    "sandbox.desired-state.updated",
                    json!({"sandbox": sandbox, "oldDesiredState": b.desired_state, "newDesiredState": dto.desired_state}),
                ));
            }
        }
        Change::SandboxDeleted { id } => {
            if let Some(mut dto) = seen.sandboxes.remove(&id) {
                let old_state = dto.state;
                dto.state = SandboxState::Destroyed;
                let org = dto.organization_id.clone();
                out.push((
                    org,
                    "sandbox.state.updated",
                    json!({"sandbox": dto, "oldState": old_state, "newState": SandboxState::Destroyed}),
                ));
            }
        }
        Change::Snapshot { record, created, previous } => {
            let dto = crate::service::snapshots::to_dto(&record);
            let org = record.org_id.clone();
            let before = seen.snapshots.insert(record.id.clone(), (org.clone(), record.state));
            let snapshot = serde_json::to_value(&dto).unwrap_or_default();
            if created {
                out.push((org, "snapshot.created", snapshot));
                return out;
            }
            let old_state = before.map(|(_, s)| s).or(previous);
            if old_state != Some(record.state) {
                out.push((
                    org,
                    "snapshot.state.updated",
                    json!({"snapshot": snapshot, "oldState": old_state, "newState": record.state}),
                ));
            }
        }
        Change::SnapshotDeleted { id } => {
            if let Some((org, _)) = seen.snapshots.remove(&id) {
                out.push((org, "snapshot.removed", serde_json::Value::String(id)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_value_is_found_and_percent_decoded() {
        assert_eq!(url_query_value("EIO=4&organizationId=a%2Fb&x=1", "organizationId").as_deref(), Some("a/b"));
        assert_eq!(url_query_value("EIO=4", "organizationId"), None);
        assert_eq!(url_query_value("organizationId=%zz", "organizationId").as_deref(), Some("%zz"));
    }
}
