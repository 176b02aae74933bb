//! `/organizations/{id}/quota`: read (admin keys: any organization; others: their own) and
//! replace (admin keys only).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::error::ApiError;
use super::extract::Body;
use crate::service::keys::Principal;
use crate::service::quotas::{QuotaDto, QuotaError, SetQuota};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/organizations/{id}/quota", get(get_one).put(set))
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

async fn get_one(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<QuotaDto>, ApiError> {
    Ok(Json(s.sandboxes.quotas().get(&who, &id).await?))
}

async fn set(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(b): Body<SetQuota>,
) -> Result<Json<QuotaDto>, ApiError> {
    Ok(Json(s.sandboxes.quotas().set(&who, &id, b).await?))
}
