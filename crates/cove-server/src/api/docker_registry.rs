//! `/docker-registry`: an organization's private registries (Daytona's `DockerRegistryApi`).
//! `/docker-registry/registry-push-access` belongs to the built-in registry and is routed
//! elsewhere. `/docker-registry/ecr-broker` (Cove extension) tells what an ECR role must trust;
//! its static segment wins over `{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use cove_types::dto::{CreateDockerRegistry, DockerRegistryDto, EcrBrokerDto, UpdateDockerRegistry};

use super::error::ApiError;
use super::extract::Body;
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/docker-registry", get(list).post(create))
        .route("/docker-registry/ecr-broker", get(ecr_broker))
        .route("/docker-registry/{id}", get(get_one).patch(update).delete(remove))
}

async fn ecr_broker(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<EcrBrokerDto>, ApiError> {
    Ok(Json(s.docker_registries.ecr_broker(&who).await?))
}

async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<CreateDockerRegistry>,
) -> Result<(StatusCode, Json<DockerRegistryDto>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.docker_registries.create(&who, b).await?)))
}

async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<DockerRegistryDto>>, ApiError> {
    Ok(Json(s.docker_registries.list(&who).await?))
}

async fn get_one(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DockerRegistryDto>, ApiError> {
    Ok(Json(s.docker_registries.get(&who, &id).await?))
}

async fn update(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(b): Body<UpdateDockerRegistry>,
) -> Result<Json<DockerRegistryDto>, ApiError> {
    Ok(Json(s.docker_registries.update(&who, &id, b).await?))
}

async fn remove(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.docker_registries.delete(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
