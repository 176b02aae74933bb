//! Per-organization quotas on sandboxes, vCPUs, memory and disk.
//!
//! Contract: every sandbox row of an organization (any state but `destroyed`: creating,
//! started, stopped, error, building…) holds its count, CPUs, memory and disk against the
//! organization's quota; the warm pool's prepared sandboxes have no row and hold nothing.
//! A create calls [`QuotaService::admit`] and keeps the returned [`Admission`] until its
//! row is inserted: admissions of one organization are serialized, so two concurrent
//! creates cannot both take the last unit. Each limit is the organization's stored value
//! (set by an admin key with `PUT /api/organizations/{id}/quota`) or else the server default
//! (`--org-quota-*`); `None` is unlimited. A create over quota is refused with 403 naming
//! the quota: "organization quota exceeded: cpu 8 of 8 in use, 2 requested".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cove_types::ErrorKind;
use serde::{Deserialize, Serialize};

use super::keys::Principal;
use super::now_millis;
use crate::store::{QuotaRecord, SandboxUsage, Store, StoreError};

/// Limits of one organization; `None` is unlimited. Memory and disk in GiB, like the API's
/// sandbox resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Sandboxes.
    pub sandboxes: Option<i64>,
    /// vCPUs.
    pub cpu: Option<i64>,
    /// Memory, GiB.
    pub memory: Option<i64>,
    /// Disk, GiB.
    pub disk: Option<i64>,
}

/// The server defaults when none is configured: 100 sandboxes, the rest unlimited.
pub const DEFAULT_LIMITS: Limits = Limits { sandboxes: Some(100), cpu: None, memory: None, disk: None };

/// What an organization's sandboxes hold, or what one new sandbox asks for.
pub type Usage = SandboxUsage;

/// One quota'd resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Number of sandboxes.
    Sandboxes,
    /// vCPUs.
    Cpu,
    /// Memory (GiB).
    Memory,
    /// Disk (GiB).
    Disk,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Self::Sandboxes => "sandboxes",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Disk => "disk",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Memory | Self::Disk => " GiB",
            Self::Sandboxes | Self::Cpu => "",
        }
    }
}

/// A create that would take `resource` past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "organization quota exceeded: {} {used} of {limit}{} in use, {asked}{} requested",
    resource.name(),
    resource.unit(),
    resource.unit()
)]
pub struct Exceeded {
    /// Which quota.
    pub resource: Resource,
    /// Its limit.
    pub limit: i64,
    /// What the organization's sandboxes hold now.
    pub used: i64,
    /// What the create asked for.
    pub asked: i64,
}

impl Limits {
    /// `stored` values over these defaults.
    pub fn overlay(self, stored: Option<&QuotaRecord>) -> Limits {
        let Some(s) = stored else { return self };
        Limits {
            sandboxes: s.sandboxes.or(self.sandboxes),
            cpu: s.cpu.or(self.cpu),
            memory: s.memory.or(self.memory),
            disk: s.disk.or(self.disk),
        }
    }

    /// Whether `ask` fits next to `used`; otherwise the first quota it would exceed.
    pub fn admit(&self, used: &Usage, ask: &Usage) -> Result<(), Exceeded> {
        let checks = [
            (Resource::Sandboxes, self.sandboxes, used.sandboxes, ask.sandboxes),
            (Resource::Cpu, self.cpu, used.cpu, ask.cpu),
            (Resource::Memory, self.memory, used.memory, ask.memory),
            (Resource::Disk, self.disk, used.disk, ask.disk),
        ];
        for (resource, limit, used, asked) in checks {
            if let Some(limit) = limit
                && used.saturating_add(asked) > limit
            {
                return Err(Exceeded { resource, limit, used, asked });
            }
        }
        Ok(())
    }
}

/// A failed quota operation.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The create does not fit.
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    /// A non-admin key tried to change a quota.
    #[error("only an admin API key may change organization quotas")]
    NotAdmin,
    /// No such organization (or not the caller's, for a non-admin key).
    #[error("organization {id} not found")]
    OrgNotFound {
        /// What was asked for.
        id: String,
    },
    /// A limit is out of range.
    #[error("quota {field} must be a non-negative integer or null (the server default), got {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// The store failed.
    #[error("{op}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
}

impl QuotaError {
    /// The error class: over quota and non-admin changes are 403.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Exceeded(_) | Self::NotAdmin => ErrorKind::PermissionDenied,
            Self::OrgNotFound { .. } => ErrorKind::NotFound,
            Self::Invalid { .. } => ErrorKind::InvalidArgument,
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> QuotaError {
    move |source| QuotaError::Store { op, source }
}

/// `PUT /api/organizations/{id}/quota`: every limit; `null` or absent is the server default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetQuota {
    /// Sandboxes.
    #[serde(default)]
    pub sandboxes: Option<i64>,
    /// vCPUs.
    #[serde(default)]
    pub cpu: Option<i64>,
    /// Memory, GiB.
    #[serde(default)]
    pub memory: Option<i64>,
    /// Disk, GiB.
    #[serde(default)]
    pub disk: Option<i64>,
}

/// An organization's quota as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaDto {
    /// The organization.
    pub organization_id: String,
    /// The limits in force (`null`: unlimited).
    #[serde(flatten)]
    pub limits: Limits,
    /// What its sandboxes hold now.
    pub used: UsageDto,
}

/// [`Usage`] as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageDto {
    /// Sandboxes.
    pub sandboxes: i64,
    /// vCPUs.
    pub cpu: i64,
    /// Memory, GiB.
    pub memory: i64,
    /// Disk, GiB.
    pub disk: i64,
}

/// Holds the organization's admission lock until the new sandbox's row is inserted.
#[derive(Debug)]
#[must_use = "the admission only holds while the sandbox row is inserted"]
pub struct Admission {
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// Quota lookups, checks and admin changes.
#[derive(Debug, Clone)]
pub struct QuotaService {
    store: Arc<dyn Store>,
    defaults: Limits,
    /// Organization id → its admission lock.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl QuotaService {
    /// A service over `store` with the server's default limits.
    pub fn new(store: Arc<dyn Store>, defaults: Limits) -> Self {
        QuotaService { store, defaults, locks: Arc::default() }
    }

    async fn limits(&self, org_id: &str) -> Result<Limits, QuotaError> {
        let stored = self.store.get_org_quota(org_id).await.map_err(store("read organization quota"))?;
        Ok(self.defaults.overlay(stored.as_ref()))
    }

    /// Checks that a sandbox of `cpu`, `memory` and `disk` fits the organization's quota and
    /// holds the organization's admission lock until the returned value is dropped.
    pub async fn admit(&self, org_id: &str, cpu: i64, memory: i64, disk: i64) -> Result<Admission, QuotaError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(org_id.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        let limits = self.limits(org_id).await?;
        let used = self.store.sandbox_usage(org_id).await.map_err(store("count organization sandboxes"))?;
        let ask = Usage { sandboxes: 1, cpu, memory, disk };
        if let Err(e) = limits.admit(&used, &ask) {
            tracing::info!(
                org_id,
                resource = e.resource.name(),
                limit = e.limit,
                used = e.used,
                asked = e.asked,
                "create refused by quota"
            );
            return Err(e.into());
        }
        Ok(Admission { _lock: guard })
    }

    /// An organization's limits and usage: any organization for an admin key, only its own
    /// for other keys.
    pub async fn get(&self, who: &Principal, org_id: &str) -> Result<QuotaDto, QuotaError> {
        if !who.admin && who.org_id != org_id {
            return Err(QuotaError::OrgNotFound { id: org_id.to_string() });
        }
        self.require_org(org_id).await?;
        self.dto(org_id).await
    }

    /// Replaces an organization's limits (admin keys only).
    pub async fn set(&self, who: &Principal, org_id: &str, req: SetQuota) -> Result<QuotaDto, QuotaError> {
        if !who.admin {
            return Err(QuotaError::NotAdmin);
        }
        for (field, v) in [("sandboxes", req.sandboxes), ("cpu", req.cpu), ("memory", req.memory), ("disk", req.disk)] {
            if let Some(value) = v.filter(|v| *v < 0) {
                return Err(QuotaError::Invalid { field, value });
            }
        }
        self.require_org(org_id).await?;
        let rec = QuotaRecord {
            org_id: org_id.to_string(),
            sandboxes: req.sandboxes,
            cpu: req.cpu,
            memory: req.memory,
            disk: req.disk,
            updated_at: now_millis(),
        };
        self.store.set_org_quota(&rec).await.map_err(store("set organization quota"))?;
        tracing::info!(org_id, by_key = %who.key_id, sandboxes = ?rec.sandboxes, cpu = ?rec.cpu, memory = ?rec.memory, disk = ?rec.disk, "organization quota set");
        self.dto(org_id).await
    }

    async fn require_org(&self, org_id: &str) -> Result<(), QuotaError> {
        match self.store.get_org(org_id).await.map_err(store("get organization"))? {
            Some(_) => Ok(()),
            None => Err(QuotaError::OrgNotFound { id: org_id.to_string() }),
        }
    }

    async fn dto(&self, org_id: &str) -> Result<QuotaDto, QuotaError> {
        let limits = self.limits(org_id).await?;
        let u = self.store.sandbox_usage(org_id).await.map_err(store("count organization sandboxes"))?;
        Ok(QuotaDto {
            organization_id: org_id.to_string(),
            limits,
            used: UsageDto { sandboxes: u.sandboxes, cpu: u.cpu, memory: u.memory, disk: u.disk },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(sandboxes: i64, cpu: i64, memory: i64, disk: i64) -> Usage {
        Usage { sandboxes, cpu, memory, disk }
    }

    #[test]
    fn a_create_that_fills_a_quota_exactly_is_admitted_and_the_next_one_is_not() {
        let l = Limits { sandboxes: None, cpu: Some(8), memory: None, disk: None };
        assert_eq!(l.admit(&usage(3, 6, 6, 9), &usage(1, 2, 1, 3)), Ok(()));
        let e = l.admit(&usage(4, 8, 7, 12), &usage(1, 2, 1, 3)).unwrap_err();
        assert_eq!(e, Exceeded { resource: Resource::Cpu, limit: 8, used: 8, asked: 2 });
        assert_eq!(e.to_string(), "organization quota exceeded: cpu 8 of 8 in use, 2 requested");
    }

    #[test]
    fn the_message_names_the_quota_and_its_unit() {
        let l = Limits { sandboxes: Some(1), cpu: None, memory: Some(4), disk: Some(10) };
        let e = l.admit(&usage(1, 1, 1, 3), &usage(1, 1, 1, 3)).unwrap_err();
        assert_eq!(e.to_string(), "organization quota exceeded: sandboxes 1 of 1 in use, 1 requested");
        let e = l.admit(&usage(0, 0, 3, 0), &usage(1, 1, 2, 3)).unwrap_err();
        assert_eq!(e.to_string(), "organization quota exceeded: memory 3 of 4 GiB in use, 2 GiB requested");
        let e = l.admit(&usage(0, 0, 0, 8), &usage(1, 1, 1, 3)).unwrap_err();
        assert_eq!(e.resource, Resource::Disk);
    }

    #[test]
    fn unlimited_quotas_admit_anything_and_a_zero_quota_admits_nothing() {
        let none = Limits::default();
        assert_eq!(none.admit(&usage(i64::MAX, i64::MAX, 0, 0), &usage(1, 1, 1, 1)), Ok(()), "no overflow");
        let zero = Limits { sandboxes: Some(0), ..Limits::default() };
        assert!(zero.admit(&usage(0, 0, 0, 0), &usage(1, 1, 1, 1)).is_err());
    }

    #[test]
    fn stored_limits_override_the_defaults_one_by_one() {
        let defaults = Limits { sandboxes: Some(100), cpu: Some(64), memory: None, disk: None };
        let stored = QuotaRecord {
            org_id: "o".into(),
            sandboxes: Some(1),
            cpu: None,
            memory: Some(8),
            disk: None,
            updated_at: 0,
        };
        assert_eq!(
            defaults.overlay(Some(&stored)),
            Limits { sandboxes: Some(1), cpu: Some(64), memory: Some(8), disk: None }
        );
        assert_eq!(defaults.overlay(None), defaults);
    }

    #[test]
    fn unknown_fields_in_a_quota_change_are_refused_not_ignored() {
        assert!(serde_json::from_str::<SetQuota>(r#"{"sandboxes": 1, "gpu": 2}"#).is_err());
        let q: SetQuota = serde_json::from_str(r#"{"cpu": 8, "memory": null}"#).unwrap();
        assert_eq!((q.sandboxes, q.cpu, q.memory), (None, Some(8), None));
    }

    mod with_a_store {
        use super::super::*;
        use crate::store::Organization;
        use crate::store::testing::{self, Kind, each_store};

        each_store!(
            only_an_admin_key_changes_a_quota_and_members_read_only_their_own,
            stopped_failed_and_building_sandboxes_count_and_other_organizations_do_not,
            admissions_of_one_organization_wait_for_each_other,
        );

        async fn svc(kind: Kind, defaults: Limits) -> (tempfile::TempDir, QuotaService, Principal, Principal) {
            let d = tempfile::tempdir().unwrap();
            let s = testing::open(kind, d.path()).await;
            for id in ["admin-org", "team"] {
                s.insert_org(&Organization { id: id.into(), name: id.into(), created_at: 0 }).await.unwrap();
            }
            let admin = Principal { org_id: "admin-org".into(), key_id: "k1".into(), admin: true };
            let member = Principal { org_id: "team".into(), key_id: "k2".into(), admin: false };
            (d, QuotaService::new(s, defaults), admin, member)
        }

        async fn only_an_admin_key_changes_a_quota_and_members_read_only_their_own(kind: Kind) {
            let (_d, q, admin, member) = svc(kind, DEFAULT_LIMITS).await;
            let set = SetQuota { sandboxes: Some(1), ..SetQuota::default() };
            assert!(matches!(q.set(&member, "team", set.clone()).await, Err(QuotaError::NotAdmin)));
            let dto = q.set(&admin, "team", set).await.unwrap();
            assert_eq!(dto.limits.sandboxes, Some(1));
            assert_eq!(q.get(&member, "team").await.unwrap().limits.sandboxes, Some(1));
            assert!(matches!(q.get(&member, "admin-org").await, Err(QuotaError::OrgNotFound { .. })));
            assert!(matches!(q.set(&admin, "nope", SetQuota::default()).await, Err(QuotaError::OrgNotFound { .. })));
            let neg = SetQuota { cpu: Some(-1), ..SetQuota::default() };
            assert!(matches!(q.set(&admin, "team", neg).await, Err(QuotaError::Invalid { field: "cpu", .. })));
        }

        fn sandbox(id: &str, org: &str, state: cove_types::SandboxState) -> crate::store::SandboxRecord {
            crate::store::SandboxRecord {
                image_digest: String::new(),
                cpu: 2,
                mem: 4,
                disk: 10,
                auto_stop: 0,
                created_at: 0,
                updated_at: 0,
                ..crate::store::testing::sandbox(id, org, state)
            }
        }

        async fn stopped_failed_and_building_sandboxes_count_and_other_organizations_do_not(kind: Kind) {
            use cove_types::SandboxState as S;
            let (_d, q, admin, member) = svc(kind, DEFAULT_LIMITS).await;
            for (id, st) in [("a", S::Started), ("b", S::Stopped), ("c", S::Error), ("d", S::PendingBuild)] {
                q.store.insert_sandbox(&sandbox(id, "team", st)).await.unwrap();
            }
            q.store.insert_sandbox(&sandbox("e", "team", S::Destroyed)).await.unwrap();
            q.store.insert_sandbox(&sandbox("f", "admin-org", S::Started)).await.unwrap();
            let used = q.get(&member, "team").await.unwrap().used;
            assert_eq!(used, UsageDto { sandboxes: 4, cpu: 8, memory: 16, disk: 40 });
            q.set(&admin, "team", SetQuota { cpu: Some(9), ..SetQuota::default() }).await.unwrap();
            let e = q.admit("team", 2, 1, 1).await.unwrap_err();
            assert_eq!(e.to_string(), "organization quota exceeded: cpu 8 of 9 in use, 2 requested");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
            drop(q.admit("team", 1, 1, 1).await.unwrap());
        }

        async fn admissions_of_one_organization_wait_for_each_other(kind: Kind) {
            let (_d, q, _, _) = svc(kind, DEFAULT_LIMITS).await;
            let first = q.admit("team", 1, 1, 3).await.unwrap();
            let q2 = q.clone();
            let second = tokio::spawn(async move { q2.admit("team", 1, 1, 3).await.map(|_| ()) });
            let other = q.admit("admin-org", 1, 1, 3).await;
            assert!(other.is_ok(), "another organization is not held up");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!second.is_finished(), "the second create waits until the first one's row is in");
            drop(first);
            second.await.unwrap().unwrap();
        }
    }
}
