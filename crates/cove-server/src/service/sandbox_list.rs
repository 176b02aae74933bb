//! `GET /api/sandbox`: the filters, sort and cursor pages the SDKs' `list()` sends.
//!
//! Contract:
//! - Every query parameter of the SDKs' `listSandboxes` is honoured; any other parameter
//!   name, a repeated single-valued one, or a value that does not parse (an unknown state,
//!   sort field or order, a bad number, boolean, time or cursor) is a 400 naming it.
//!   `autoDestroyAtAfter`/`autoDestroyAtBefore` are refused by name: Cove does not schedule
//!   a destroy time it could compare.
//! - Filters: `id` and `name` are case-insensitive prefixes; `labels` a JSON object of
//!   strings that must all match; `states`, `snapshots`, `regionIds`, `sandboxClasses`
//!   repeatable (any of); `min/max` `Cpu`, `MemoryGiB`, `DiskGiB`, `Gpu` inclusive bounds;
//!   `isPublic`; `isRecoverable` (Cove has no recoverable errors: `true` matches none);
//!   `createdAt…`/`lastEvent…` `After`/`Before` exclusive bounds (RFC 3339, or the Python
//!   SDK's `%Y-%m-%dT%H:%M:%S.%f%z`, or a time without zone read as UTC).
//!   `includeErroredDeleted` and `includeWarm` are accepted booleans: Cove keeps no rows of
//!   deleted sandboxes and warm-pool sandboxes belong to no organization, so they add none.
//! - `sort` ∈ name, cpu, memoryGib, diskGib, lastActivityAt, createdAt (default createdAt),
//!   `order` asc/desc (default desc); ties are broken by id, so pages never overlap.
//! - `limit` 1..=200 (default 100) per page; `nextCursor` is set when more rows follow and is
//!   opaque (the next row's position in this order), `null` on the last page.
//! - The organization's rows are filtered here rather than in SQL: organization quotas bound
//!   how many there are, and last activity lives in the lifecycle service's memory.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, NaiveDateTime};
use cove_types::SandboxState;
use cove_types::sandbox::{ListSandboxesResponse, SandboxListItem};

use super::keys::Principal;
use super::sandboxes::{SandboxError, SandboxService};
use crate::store::{Millis, SandboxRecord};

/// The most rows one page answers.
pub const MAX_LIMIT: usize = 200;
/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// What a list sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortField {
    /// `name`.
    Name,
    /// `cpu`.
    Cpu,
    /// `memoryGib`.
    Memory,
    /// `diskGib`.
    Disk,
    /// `lastActivityAt`.
    LastActivity,
    /// `createdAt`.
    #[default]
    CreatedAt,
}

/// A parsed `GET /sandbox` query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    cursor: Option<usize>,
    limit: Option<usize>,
    id: Option<String>,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    states: Vec<SandboxState>,
    snapshots: Vec<String>,
    region_ids: Vec<String>,
    classes: Vec<String>,
    cpu: (Option<i64>, Option<i64>),
    memory: (Option<i64>, Option<i64>),
    disk: (Option<i64>, Option<i64>),
    gpu: (Option<i64>, Option<i64>),
    is_public: Option<bool>,
    is_recoverable: Option<bool>,
    created: (Option<Millis>, Option<Millis>),
    last_event: (Option<Millis>, Option<Millis>),
    sort: SortField,
    ascending: bool,
}

fn invalid(msg: String) -> SandboxError {
    SandboxError::Invalid(msg)
}

impl ListQuery {
    /// Parses the raw query string (repeated keys for the list parameters, as both SDKs send).
    pub fn parse(raw: Option<&str>) -> Result<Self, SandboxError> {
        let mut q = ListQuery::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (key, value) = (key.into_owned(), value.into_owned());
            let repeatable = matches!(key.as_str(), "states" | "snapshots" | "regionIds" | "sandboxClasses");
            if !repeatable && !seen.insert(key.clone()) {
                return Err(invalid(format!("query parameter {key} is given more than once")));
            }
            let int = |v: &str| -> Result<i64, SandboxError> {
                v.parse::<i64>().map_err(|_| invalid(format!("query parameter {key} must be an integer, got {v:?}")))
            };
            let boolean = |v: &str| -> Result<bool, SandboxError> {
                match v {
                    "true" | "True" | "1" => Ok(true),
                    "false" | "False" | "0" => Ok(false),
                    _ => Err(invalid(format!("query parameter {key} must be true or false, got {v:?}"))),
                }
            };
            let time = |v: &str| {
                parse_time(v)
                    .ok_or_else(|| invalid(format!("query parameter {key} must be an ISO 8601 time, got {v:?}")))
            };
            match key.as_str() {
                "cursor" => q.cursor = Some(decode_cursor(&value)?),
                "limit" => {
                    let n = int(&value)?;
                    if !(1..=MAX_LIMIT as i64).contains(&n) {
                        return Err(invalid(format!("query parameter limit must be 1 to {MAX_LIMIT}, got {n}")));
                    }
                    q.limit = Some(n as usize);
                }
                "id" => q.id = Some(value.to_lowercase()),
                "name" => q.name = Some(value.to_lowercase()),
                "labels" => {
                    if !value.is_empty() {
                        q.labels = serde_json::from_str(&value).map_err(|e| {
                            invalid(format!("query parameter labels must be a JSON object of strings: {e}"))
                        })?;
                    }
                }
                "includeErroredDeleted" | "includeWarm" => {
                    boolean(&value)?;
                }
                "states" => q.states.push(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("query parameter states: unknown sandbox state {value:?}")))?,
                ),
                "snapshots" => q.snapshots.push(value),
                "regionIds" => q.region_ids.push(value),
                "sandboxClasses" => q.classes.push(value),
                "minCpu" => q.cpu.0 = Some(int(&value)?),
                "maxCpu" => q.cpu.1 = Some(int(&value)?),
                "minMemoryGiB" => q.memory.0 = Some(int(&value)?),
                "maxMemoryGiB" => q.memory.1 = Some(int(&value)?),
                "minDiskGiB" => q.disk.0 = Some(int(&value)?),
                "maxDiskGiB" => q.disk.1 = Some(int(&value)?),
                "minGpu" => q.gpu.0 = Some(int(&value)?),
                "maxGpu" => q.gpu.1 = Some(int(&value)?),
                "isPublic" => q.is_public = Some(boolean(&value)?),
                "isRecoverable" => q.is_recoverable = Some(boolean(&value)?),
                "createdAtAfter" => q.created.0 = Some(time(&value)?),
                "createdAtBefore" => q.created.1 = Some(time(&value)?),
                "lastEventAfter" => q.last_event.0 = Some(time(&value)?),
                "lastEventBefore" => q.last_event.1 = Some(time(&value)?),
                "autoDestroyAtAfter" | "autoDestroyAtBefore" => {
                    return Err(invalid(format!(
                        "query parameter {key} is not supported: Cove schedules no destroy time to compare"
                    )));
                }
                "sort" => {
                    q.sort = match value.as_str() {
                        "name" => SortField::Name,
                        "cpu" => SortField::Cpu,
                        "memoryGib" => SortField::Memory,
                        "diskGib" => SortField::Disk,
                        "lastActivityAt" => SortField::LastActivity,
                        "createdAt" => SortField::CreatedAt,
                        _ => {
                            return Err(invalid(format!(
                                "query parameter sort: unknown field {value:?} (name, cpu, memoryGib, diskGib, \
                                 lastActivityAt or createdAt)"
                            )));
                        }
                    }
                }
                "order" => {
                    q.ascending = match value.as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => return Err(invalid(format!("query parameter order must be asc or desc, got {value:?}"))),
                    }
                }
                _ => return Err(invalid(format!("unknown query parameter {key}"))),
            }
        }
        Ok(q)
    }

    fn matches(&self, r: &SandboxRecord, last_activity: Millis) -> bool {
        let within =
            |v: i64, (lo, hi): (Option<i64>, Option<i64>)| lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi);
        let between = |v: i64, (after, before): (Option<Millis>, Option<Millis>)| {
            after.is_none_or(|a| v > a) && before.is_none_or(|b| v < b)
        };
        let any_of = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        self.id.as_ref().is_none_or(|p| r.id.to_lowercase().starts_with(p))
            && self.name.as_ref().is_none_or(|p| r.name.to_lowercase().starts_with(p))
            && self.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
            && (self.states.is_empty() || self.states.contains(&r.state))
            && any_of(&self.snapshots, r.snapshot_name.as_deref().unwrap_or(""))
            && any_of(&self.region_ids, &r.region_id)
            && any_of(&self.classes, "container")
            && within(r.cpu, self.cpu)
            && within(r.mem, self.memory)
            && within(r.disk, self.disk)
            && within(r.gpu, self.gpu)
            && self.is_public.is_none_or(|p| r.public == p)
            && self.is_recoverable != Some(true)
            && between(r.created_at, self.created)
            && between(last_activity, self.last_event)
    }
}

/// A time as the SDKs send it: RFC 3339 (TypeScript's `toISOString`), Python's
/// `%Y-%m-%dT%H:%M:%S.%f%z` (`+0000`), or without a zone (UTC).
fn parse_time(v: &str) -> Option<Millis> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_millis());
    }
    if let Ok(t) = DateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.timestamp_millis());
    }
    NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

const CURSOR_PREFIX: &str = "cove-list:";

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{offset}"))
}

fn decode_cursor(c: &str) -> Result<usize, SandboxError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix(CURSOR_PREFIX).and_then(|n| n.parse().ok()))
        .ok_or_else(|| invalid(format!("query parameter cursor {c:?} is not a cursor this server gave")))
}

impl SandboxService {
    /// One page of the caller's sandboxes (see the module doc).
    pub async fn list_page(&self, who: &Principal, q: &ListQuery) -> Result<ListSandboxesResponse, SandboxError> {
        let rows = self
            .store()
            .list_sandboxes(&who.org_id)
            .await
            .map_err(|source| SandboxError::Store { op: "list sandboxes", source })?;
        let mut rows: Vec<(SandboxRecord, Millis)> = rows
            .into_iter()
            .map(|r| {
                let last = self.lifecycle().last_activity(&r.id).unwrap_or(0).max(r.updated_at);
                (r, last)
            })
            .filter(|(r, last)| q.matches(r, *last))
            .collect();
        rows.sort_by(|(a, la), (b, lb)| {
            let ord = match q.sort {
                SortField::Name => a.name.cmp(&b.name),
                SortField::Cpu => a.cpu.cmp(&b.cpu),
                SortField::Memory => a.mem.cmp(&b.mem),
                SortField::Disk => a.disk.cmp(&b.disk),
                SortField::LastActivity => la.cmp(lb),
                SortField::CreatedAt => a.created_at.cmp(&b.created_at),
            }
            .then_with(|| a.id.cmp(&b.id));
            if q.ascending { ord } else { ord.reverse() }
        });
        let start = q.cursor.unwrap_or(0).min(rows.len());
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        let end = start.saturating_add(limit).min(rows.len());
        let items: Vec<SandboxListItem> =
            rows[start..end].iter().map(|(r, _)| SandboxListItem::from(&self.dto(r))).collect();
        let next_cursor = (end < rows.len()).then(|| encode_cursor(end));
        Ok(ListSandboxesResponse { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> String {
        ListQuery::parse(Some(raw)).unwrap_err().to_string()
    }

    #[test]
    fn every_sdk_parameter_parses_and_lists_repeat() {
        let q = ListQuery::parse(Some(
            "limit=2&states=started&states=stopped&snapshots=a&snapshots=b&regionIds=us&sandboxClasses=container\
             &minCpu=1&maxCpu=4&minMemoryGiB=1&maxMemoryGiB=8&minDiskGiB=1&maxDiskGiB=20&minGpu=0&maxGpu=0\
             &isPublic=false&isRecoverable=false&includeErroredDeleted=false&includeWarm=false\
             &createdAtAfter=2024-01-01T00%3A00%3A00.000000%2B0000&createdAtBefore=2030-01-01T00:00:00.000Z\
             &lastEventAfter=2024-01-01T00:00:00&sort=name&order=asc&id=AB&name=Web&labels=%7B%22a%22%3A%22b%22%7D",
        ))
        .unwrap();
        assert_eq!(q.states, vec![SandboxState::Started, SandboxState::Stopped]);
        assert_eq!(q.snapshots, vec!["a", "b"]);
        assert_eq!((q.limit, q.sort, q.ascending), (Some(2), SortField::Name, true));
        assert_eq!(q.created.0, Some(1_704_067_200_000));
        assert_eq!(q.last_event.0, Some(1_704_067_200_000));
        assert_eq!((q.id.as_deref(), q.name.as_deref()), (Some("ab"), Some("web")));
    }

    #[test]
    fn unknown_names_and_values_are_refused_by_name() {
        assert!(err("colour=red").contains("unknown query parameter colour"));
        assert!(err("states=sleeping").contains("\"sleeping\""));
        assert!(err("sort=size").contains("\"size\""));
        assert!(err("order=up").contains("\"up\""));
        assert!(err("limit=0").contains("limit"));
        assert!(err("limit=201").contains("limit"));
        assert!(err("minCpu=x").contains("minCpu"));
        assert!(err("isPublic=maybe").contains("isPublic"));
        assert!(err("createdAtAfter=yesterday").contains("createdAtAfter"));
        assert!(err("cursor=abc").contains("cursor"));
        assert!(err("autoDestroyAtAfter=2024-01-01T00:00:00Z").contains("autoDestroyAtAfter"));
        assert!(err("limit=1&limit=2").contains("more than once"));
        assert!(err("labels=nope").contains("labels"));
    }

    #[test]
    fn a_cursor_round_trips() {
        assert_eq!(decode_cursor(&encode_cursor(17)).unwrap(), 17);
    }
}
