//! `/object-storage/push-access`: temporary credentials for uploading build contexts.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::error::ApiError;
use crate::s3::{CredentialError, PushAccess};
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/object-storage/push-access", get(push_access))
}

async fn push_access(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<PushAccess>, ApiError> {
    Ok(Json(s.object_storage.push_access(&who.org_id)?))
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}
