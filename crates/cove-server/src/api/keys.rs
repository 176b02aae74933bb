//! `/api-keys` and `/organizations`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use cove_types::dto::{ApiKeyDto, CreateApiKey, CreateOrganization, CreatedApiKey, OrganizationDto};

use super::error::ApiError;
use super::extract::Body;
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api-keys", post(create).get(list))
        .route("/api-keys/{id}", delete(revoke))
        .route("/organizations", post(create_org))
}

async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<CreateApiKey>,
) -> Result<Json<CreatedApiKey>, ApiError> {
    Ok(Json(s.keys.create(&who, &b.name).await?))
}

async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<ApiKeyDto>>, ApiError> {
    Ok(Json(s.keys.list(&who).await?))
}

async fn revoke(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.keys.revoke(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_org(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<CreateOrganization>,
) -> Result<Json<OrganizationDto>, ApiError> {
    Ok(Json(s.keys.create_org(&who, &b.name).await?))
}
