//! The services behind the HTTP handlers: all validation, state rules and background jobs.

pub mod builds;
pub mod ecr;
pub mod keys;
pub mod lifecycle;
pub mod network;
pub mod nodes;
pub mod pool;
pub mod quotas;
pub mod registries;
pub mod sandbox_list;
pub mod sandboxes;
pub mod secrets;
pub mod snapshots;

/// Now, in Unix milliseconds.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as the SDK's ISO-8601 text.
pub fn iso(ms: i64) -> String {
    cove_types::dto::iso8601(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
}
