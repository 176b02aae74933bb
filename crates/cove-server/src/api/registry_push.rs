//! `GET /api/docker-registry/registry-push-access`: short-lived credentials for pushing to
//! the built-in registry (`/v2/`). The static segment wins over `/docker-registry/{id}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use cove_types::dto::RegistryPushAccessDto;

use super::error::ApiError;
use crate::registry::RegistryError;
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/docker-registry/registry-push-access", get(push_access))
}

async fn push_access(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<RegistryPushAccessDto>, ApiError> {
    Ok(Json(s.registry.push_access(&who.org_id)?))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::new(e.kind(), cove_types::error::chain(&e))
    }
}
