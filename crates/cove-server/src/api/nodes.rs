//! `/nodes`: the installation's nodes (admin keys only; a server without `--database-url`
//! answers 400, being the only node): list, drain, undrain.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::error::ApiError;
use crate::service::keys::Principal;
use crate::service::nodes::{self, NodeDto, NodeError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/nodes", get(list))
        .route("/nodes/{id}/drain", post(drain))
        .route("/nodes/{id}/undrain", post(undrain))
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

async fn list(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<Vec<NodeDto>>, ApiError> {
    Ok(Json(nodes::for_admin(s.nodes.as_ref(), &who)?.list().await?))
}

async fn drain(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<NodeDto>, ApiError> {
    Ok(Json(nodes::for_admin(s.nodes.as_ref(), &who)?.drain(&id).await?))
}

async fn undrain(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<NodeDto>, ApiError> {
    Ok(Json(nodes::for_admin(s.nodes.as_ref(), &who)?.undrain(&id).await?))
}
