//! `GET /api/docker-registry/registry-push-access`: short-lived credentials for pushing to
//! the built-in registry (`/v2/`). The static segment wins over `/docker-registry/{id}`.
//!
//! `?namespace=cove` asks for the system namespace (`cove/…`, pulled by every organization):
//! admin keys only, 403 otherwise. `?regionId=` (the SDK's) must name a served region; the
//! registry is the same for all of them.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use cove_types::dto::RegistryPushAccessDto;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Params;
use crate::registry::RegistryError;
use crate::registry::service::{Namespace, SYSTEM_NAMESPACE};
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/docker-registry/registry-push-access", get(push_access))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PushAccessQuery {
    region_id: Option<String>,
    namespace: Option<String>,
}

async fn push_access(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Params(q): Params<PushAccessQuery>,
) -> Result<Json<RegistryPushAccessDto>, ApiError> {
    if let Some(r) = q.region_id.as_deref().filter(|r| !r.is_empty()) {
        s.snapshots.region(Some(r))?;
    }
    let namespace = match q.namespace.as_deref() {
        None | Some("") => Namespace::Org,
        Some(n) if n == SYSTEM_NAMESPACE => Namespace::System,
        Some(n) if n == who.org_id => Namespace::Org,
        Some(n) => return Err(RegistryError::UnknownNamespace(n.to_string()).into()),
    };
    Ok(Json(s.registry.push_access(&who.org_id, who.admin, namespace)?))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}
