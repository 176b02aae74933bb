//! Health and regions.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use cove_types::dto::RegionDto;

use crate::state::AppState;

pub fn public_router() -> Router<AppState> {
    Router::new().route("/health", super::health_route())
}

pub fn authed_router() -> Router<AppState> {
    Router::new().route("/shared-regions", get(regions)).route("/regions", get(regions))
}

async fn regions(State(s): State<AppState>) -> axum::Json<Vec<RegionDto>> {
    let t = cove_types::dto::iso8601(s.started_at);
    axum::Json(
        s.snapshots
            .regions()
            .iter()
            .map(|r| RegionDto {
                id: r.clone(),
                name: r.clone(),
                region_type: "shared".into(),
                created_at: t.clone(),
                updated_at: t.clone(),
            })
            .collect(),
    )
}
