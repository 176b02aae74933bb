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

/// A region as the SDK reads it, plus Cove's `gpus`: GPUs of the machine serving it (0: none;
/// `cove image bootstrap --general` adds `cove-gpu` only when there are some).
#[derive(serde::Serialize)]
struct Region {
    #[serde(flatten)]
    region: RegionDto,
    gpus: usize,
}

async fn regions(State(s): State<AppState>) -> axum::Json<Vec<Region>> {
    let t = cove_types::dto::iso8601(s.started_at);
    let gpus = s.sandboxes.gpu_total();
    axum::Json(
        s.snapshots
            .regions()
            .iter()
            .map(|r| Region {
                region: RegionDto {
                    id: r.clone(),
                    name: r.clone(),
                    region_type: "shared".into(),
                    created_at: t.clone(),
                    updated_at: t.clone(),
                },
                gpus,
            })
            .collect(),
    )
}
