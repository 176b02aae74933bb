//! `/builds/cache`: the build step cache, for administrators (its entries name steps of every
//! organization's builds).

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use cove_types::ErrorKind;

use super::error::ApiError;
use super::extract::Params;
use crate::service::keys::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/builds/cache", get(list).delete(prune))
}

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "the build cache is shared by all organizations: use an admin key",
        ))
    }
}

async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&who)?;
    Ok(Json(s.snapshots.builds().cache_report()))
}

/// `?unusedForSecs=N`: only entries unused for that long; absent: everything.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PruneQuery {
    unused_for_secs: Option<u64>,
}

async fn prune(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Params(q): Params<PruneQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&who)?;
    Ok(Json(s.snapshots.builds().prune_cache(q.unused_for_secs).await?))
}
