//! `/object-storage/push-access`: temporary credentials for uploading build contexts;
//! `/object-storage/ca`: the CA the endpoint's certificate is signed by (public, but asked
//! for with a key so that `cove login` gets it from the server it authenticated to).

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::error::ApiError;
use crate::s3::{CredentialError, PushAccess};
use crate::service::keys::Principal;
use crate::state::AppState;
use crate::tls::CaCertificate;

pub fn router() -> Router<AppState> {
    Router::new().route("/object-storage/push-access", get(push_access)).route("/object-storage/ca", get(ca))
}

async fn push_access(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<PushAccess>, ApiError> {
    Ok(Json(s.object_storage.push_access(&who.org_id)?))
}

async fn ca(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Json<CaCertificate> {
    tracing::debug!(org_id = %who.org_id, "object storage CA handed out");
    Json(s.object_storage.ca().clone())
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}
