//! Snapshots: validation, the state machine, and the durable pull job.
//!
//! A snapshot row *is* its job record: `pending`/`pulling` rows are resumed at start, so a
//! server killed mid-pull never leaves one stuck. The image store's staging and completion
//! markers make sure a half-written rootfs is never used.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_image::{ImageRecord, ImageStore};
use cove_types::dto::{BuildInfoDto, CreateSnapshot, PaginatedSnapshots, SnapshotDto};
use cove_types::reference::ParseRefError;
use cove_types::{Digest, ErrorKind, ImageRef, SnapshotName, SnapshotState};

use super::builds::BuildService;
use super::keys::Principal;
use super::{iso, now_millis};
use crate::store::{BuildSpec, SnapshotQuery, SnapshotRecord, SnapshotSort, Store, StoreError};

/// Resources when the request names none (the seed's defaults).
pub const DEFAULT_CPU: i64 = 1;
/// GiB.
pub const DEFAULT_MEMORY_GIB: i64 = 1;
/// GiB.
pub const DEFAULT_DISK_GIB: i64 = 3;
/// Used when neither the request nor the image has an entrypoint.
pub const DEFAULT_ENTRYPOINT: [&str; 2] = ["sleep", "infinity"];
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// Largest page.
pub const MAX_PAGE_SIZE: i64 = 200;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Upper bounds on per-snapshot resources (a guard against typos such as memory=4096).
pub const MAX_CPU: i64 = 128;
/// GiB.
pub const MAX_MEMORY_GIB: i64 = 1024;
/// GiB.
pub const MAX_DISK_GIB: i64 = 4096;
/// GPUs.
pub const MAX_GPU: i64 = 8;

/// A failed snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A field is missing or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The image reference is unusable.
    #[error(transparent)]
    ImageName(#[from] ParseRefError),
    /// Build logs of a snapshot that was pulled, not built.
    #[error("snapshot {name} has no build info: it was pulled from {image}, not built")]
    NoBuildInfo {
        /// The snapshot.
        name: String,
        /// Its image.
        image: String,
    },
    /// The region is not served here.
    #[error("region {region:?} not found; this server serves: {served}")]
    RegionNotFound {
        /// Asked for.
        region: String,
        /// Comma-separated list.
        served: String,
    },
    /// Name taken.
    #[error("snapshot with name \"{name}\" already exists for this organization")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The name is a general snapshot's (reserved for every organization).
    #[error("snapshot name \"{name}\" is taken by a general snapshot every organization shares; choose another name")]
    NameReserved {
        /// The name.
        name: String,
    },
    /// A general snapshot, changed by a key that is not an admin key.
    #[error(
        "cannot {verb} snapshot {name}: it is a general snapshot, shared by every organization; only an admin API key may {verb} it"
    )]
    GeneralSnapshot {
        /// The verb.
        verb: &'static str,
        /// The snapshot.
        name: String,
    },
    /// No such snapshot in the caller's organization.
    #[error("snapshot {id_or_name} not found")]
    NotFound {
        /// What was asked for.
        id_or_name: String,
    },
    /// The verb is not allowed in the current state.
    #[error("cannot {verb} snapshot {name}: it is {state}{hint}")]
    WrongState {
        /// The verb.
        verb: &'static str,
        /// The snapshot.
        name: String,
        /// Its state.
        state: SnapshotState,
        /// What to do instead.
        hint: &'static str,
    },
    /// An active snapshot whose image is not on disk (removed by hand).
    #[error(
        "the image of snapshot {name} is missing from the data directory; deactivate and activate it to pull it again"
    )]
    ImageMissing {
        /// The snapshot.
        name: String,
    },
    /// Pulling the image again (to re-pin the snapshot) failed; the snapshot is unchanged.
    #[error("cannot pull {image} again for snapshot {name} (it keeps its image): {reason}")]
    PullFailed {
        /// The snapshot.
        name: String,
        /// Its image name.
        image: String,
        /// Why.
        reason: String,
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

impl SnapshotError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::ImageName(_) => ErrorKind::InvalidArgument,
            Self::RegionNotFound { .. } | Self::NotFound { .. } | Self::NoBuildInfo { .. } => ErrorKind::NotFound,
            Self::NameTaken { .. } | Self::NameReserved { .. } => ErrorKind::AlreadyExists,
            Self::GeneralSnapshot { .. } => ErrorKind::PermissionDenied,
            Self::WrongState { .. } | Self::ImageMissing { .. } => ErrorKind::FailedPrecondition,
            Self::PullFailed { .. } => ErrorKind::Unavailable,
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> SnapshotError {
    move |source| SnapshotError::Store { op, source }
}

/// `GET /snapshots` query parameters, as received.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ListParams {
    /// 1-based.
    pub page: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
    /// Name substring.
    pub name: Option<String>,
    /// `name`, `state`, `lastUsedAt`, `createdAt`, `updatedAt`.
    pub sort: Option<String>,
    /// `asc` or `desc`.
    pub order: Option<String>,
}

/// Snapshot operations and their background jobs.
#[derive(Debug, Clone)]
pub struct SnapshotService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    images: Arc<ImageStore>,
    regions: Vec<String>,
    /// Snapshot ids with a pull job running, so one snapshot never has two.
    running: Mutex<HashSet<String>>,
    gc: tokio::sync::Mutex<()>,
    /// Image digests in use outside the database (warm-pool sandboxes), with use counts.
    pinned: Mutex<HashMap<String, usize>>,
    builds: BuildService,
    /// The built-in registry: its blobs are GC roots, and its images are imported, not pulled.
    registry: std::sync::OnceLock<crate::registry::RegistryService>,
    /// The organizations' private registries, whose credentials pulls use.
    docker_registries: std::sync::OnceLock<super::registries::DockerRegistryService>,
    /// Ids of deleted snapshots, for the warm pool (its prepared sandboxes go at once).
    deleted: tokio::sync::broadcast::Sender<String>,
}

impl SnapshotService {
    /// A service; call [`SnapshotService::resume`] once at start.
    pub fn new(store: Arc<dyn Store>, images: Arc<ImageStore>, regions: Vec<String>, builds: BuildService) -> Self {
        assert!(!regions.is_empty(), "the server always serves at least one region");
        SnapshotService {
            inner: Arc::new(Inner {
                store,
                images,
                regions,
                running: Mutex::new(HashSet::new()),
                gc: tokio::sync::Mutex::new(()),
                pinned: Mutex::new(HashMap::new()),
                builds,
                registry: std::sync::OnceLock::new(),
                docker_registries: std::sync::OnceLock::new(),
                deleted: tokio::sync::broadcast::channel(256).0,
            }),
        }
    }

    /// Validates and records a snapshot, then starts pulling it. Answers with the `pending`
    /// record; the SDK polls until `active` or `error`.
    pub async fn create(&self, who: &Principal, req: CreateSnapshot) -> Result<SnapshotDto, SnapshotError> {
        let name = SnapshotName::parse(&req.name).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let general = req.general.unwrap_or(false);
        if general && !who.admin {
            return Err(SnapshotError::GeneralSnapshot { verb: "create", name: name.as_str().to_string() });
        }
        if !general
            && self
                .inner
                .store
                .general_snapshot_named(name.as_str())
                .await
                .map_err(store("check general snapshot names"))?
                .is_some()
        {
            return Err(SnapshotError::NameReserved { name: name.as_str().to_string() });
        }
        let build = match req.build_info {
            Some(info) => {
                if req.image_name.is_some() {
                    return Err(SnapshotError::Invalid(
                        "cannot specify an image name when using a build info entry".into(),
                    ));
                }
                if req.entrypoint.is_some() {
                    return Err(SnapshotError::Invalid(
                        "cannot specify an entrypoint when using a build info entry; put an ENTRYPOINT in the Dockerfile"
                            .into(),
                    ));
                }
                Some(validate_build(info)?)
            }
            None => None,
        };
        let image_name = match &build {
            Some(b) => format!("cove-build:{}", &b.snapshot_ref()[..12]),
            None => {
                let image_name = req.image_name.as_deref().ok_or_else(|| {
                    SnapshotError::Invalid("imageName is required when buildInfo is not given".into())
                })?;
                ImageRef::parse_pinned(image_name)?;
                image_name.trim().to_string()
            }
        };
        let cpu = resource("cpu", req.cpu, DEFAULT_CPU, 1, MAX_CPU)?;
        let mem = resource("memory", req.memory, DEFAULT_MEMORY_GIB, 1, MAX_MEMORY_GIB)?;
        let disk = resource("disk", req.disk, DEFAULT_DISK_GIB, 1, MAX_DISK_GIB)?;
        let gpu = resource("gpu", req.gpu, 0, 0, MAX_GPU)?;
        // Refused, never stored and ignored: a GPU model (H100, …) is not something this
        // server can match (CDI names GPUs by index and UUID, not by model), so a snapshot
        // asking for one would get whatever GPU is free. An empty list asks for nothing.
        if req.gpu_type.as_ref().is_some_and(|v| v.iter().any(|t| !t.trim().is_empty())) {
            return Err(SnapshotError::Invalid(
                "gpuType is not supported by this server (GPUs are not told apart by model); leave it out".into(),
            ));
        }
        let gpu_type = None;
        if let Some(class) = req.sandbox_class.as_deref().filter(|c| *c != "container") {
            return Err(SnapshotError::Invalid(format!(
                "sandbox class {class:?} is not supported; this server runs \"container\" sandboxes"
            )));
        }
        let region_id = self.region(req.region_id.as_deref())?;
        let entrypoint = req
            .entrypoint
            .map(|e| e.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .filter(|e| !e.is_empty());
        let now = now_millis();
        let rec = SnapshotRecord {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: who.org_id.clone(),
            name: name.as_str().to_string(),
            image_name,
            // A build starts at once: answering `building` makes the SDKs open the log stream
            // right away (they skip it while a snapshot is `pending`).
            state: if build.is_some() { SnapshotState::Building } else { SnapshotState::Pending },
            error_reason: None,
            cpu,
            gpu,
            gpu_type,
            mem,
            disk,
            entrypoint,
            region_id,
            size_bytes: None,
            image_digest: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            build,
            general,
        };
        self.inner.store.insert_snapshot(&rec).await.map_err(|e| match e {
            StoreError::Duplicate { .. } => SnapshotError::NameTaken { name: rec.name.clone() },
            e => store("create snapshot")(e),
        })?;
        tracing::info!(snapshot_id = %rec.id, name = %rec.name, image = %rec.image_name, "snapshot created");
        if rec.build.is_some() {
            self.inner.builds.reset_log(&rec.id);
        }
        self.spawn_pull(rec.id.clone());
        Ok(self.dto(&rec))
    }

    /// The wire form of `s` as this server serves it: a general snapshot is every region's.
    fn dto(&self, s: &SnapshotRecord) -> SnapshotDto {
        let mut d = to_dto(s);
        if s.general {
            d.region_ids = self.inner.regions.clone();
        }
        d
    }

    /// The region id to use for `asked` (the default region when `None`).
    pub fn region(&self, asked: Option<&str>) -> Result<String, SnapshotError> {
        match asked {
            None => Ok(self.inner.regions[0].clone()),
            Some(r) if self.inner.regions.iter().any(|x| x == r) => Ok(r.to_string()),
            Some(r) => {
                Err(SnapshotError::RegionNotFound { region: r.to_string(), served: self.inner.regions.join(", ") })
            }
        }
    }

    /// The regions served, default first.
    pub fn regions(&self) -> &[String] {
        &self.inner.regions
    }

    /// [`Self::find`] for a verb that changes the snapshot: a general snapshot only for an
    /// admin key.
    async fn find_to_change(
        &self,
        who: &Principal,
        id_or_name: &str,
        verb: &'static str,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let s = self.find(who, id_or_name).await?;
        if s.general && !who.admin {
            return Err(SnapshotError::GeneralSnapshot { verb, name: s.name });
        }
        Ok(s)
    }

    async fn find(&self, who: &Principal, id_or_name: &str) -> Result<SnapshotRecord, SnapshotError> {
        self.inner
            .store
            .get_snapshot(&who.org_id, id_or_name)
            .await
            .map_err(store("get snapshot"))?
            .ok_or_else(|| SnapshotError::NotFound { id_or_name: id_or_name.to_string() })
    }

    /// The snapshot a new sandbox will start from, with its unpacked image. An inactive
    /// snapshot is activated, and one still pulling is waited for (up to `wait`), instead of
    /// failing. Records the use (`lastUsedAt`).
    pub async fn acquire_for_sandbox(
        &self,
        who: &Principal,
        id_or_name: &str,
        wait: Duration,
    ) -> Result<(SnapshotRecord, ImageRecord, cove_image::store::Lease), SnapshotError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut s = self.find(who, id_or_name).await?;
        if s.state == SnapshotState::Inactive {
            self.activate(who, &s.id).await?;
        }
        loop {
            s = self.find(who, &s.id).await?;
            match s.state {
                SnapshotState::Active => break,
                SnapshotState::Pending | SnapshotState::Pulling | SnapshotState::Building
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    let hint = match &s.error_reason {
                        Some(_) => "; see its errorReason",
                        None => "; it must be active",
                    };
                    return Err(wrong_state("create a sandbox from", &s, hint));
                }
            }
        }
        // Leased: a snapshot deleted meanwhile cannot have its image collected before the
        // sandbox's record (whose image_digest keeps it) exists. One re-pinned meanwhile
        // ([`Self::pull_again`]) may have had its old image collected: its new one is used.
        let mut leased = None;
        for _ in 0..3 {
            leased = match s.image_digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) {
                Some(d) => self.inner.images.lease_existing(&d).await,
                None => None,
            };
            if leased.is_some() {
                break;
            }
            let again = self.find(who, &s.id).await?;
            if again.image_digest == s.image_digest || again.state != SnapshotState::Active {
                break;
            }
            s = again;
        }
        let (image, lease) = leased.ok_or_else(|| SnapshotError::ImageMissing { name: s.name.clone() })?;
        let now = now_millis();
        self.inner.store.touch_snapshot(&s.id, now).await.map_err(store("record snapshot use"))?;
        s.last_used_at = Some(now);
        Ok((s, image, lease))
    }

    /// One snapshot by id or name.
    pub async fn get(&self, who: &Principal, id_or_name: &str) -> Result<SnapshotDto, SnapshotError> {
        Ok(self.dto(&self.find(who, id_or_name).await?))
    }

    /// A page of the caller's snapshots.
    pub async fn list(&self, who: &Principal, p: ListParams) -> Result<PaginatedSnapshots, SnapshotError> {
        let page = p.page.unwrap_or(1);
        let limit = p.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if page < 1 {
            return Err(SnapshotError::Invalid(format!("page must be at least 1 (got {page})")));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(SnapshotError::Invalid(format!("limit must be between 1 and {MAX_PAGE_SIZE} (got {limit})")));
        }
        let sort = match p.sort.as_deref().unwrap_or("lastUsedAt") {
            "lastUsedAt" => SnapshotSort::LastUsedAt,
            "createdAt" => SnapshotSort::CreatedAt,
            "updatedAt" => SnapshotSort::UpdatedAt,
            "name" => SnapshotSort::Name,
            "state" => SnapshotSort::State,
            other => {
                return Err(SnapshotError::Invalid(format!(
                    "sort {other:?} is not one of name, state, lastUsedAt, createdAt, updatedAt"
                )));
            }
        };
        let ascending = match p.order.as_deref().unwrap_or("desc") {
            "asc" => true,
            "desc" => false,
            other => return Err(SnapshotError::Invalid(format!("order {other:?} is not asc or desc"))),
        };
        let q = SnapshotQuery {
            name: p.name.filter(|n| !n.is_empty()),
            sort,
            ascending,
            offset: (page - 1).saturating_mul(limit),
            limit,
        };
        let (items, total) = self.inner.store.list_snapshots(&who.org_id, &q).await.map_err(store("list snapshots"))?;
        Ok(PaginatedSnapshots {
            items: items.iter().map(|s| self.dto(s)).collect(),
            total,
            page,
            total_pages: (total + limit - 1) / limit,
        })
    }

    /// Makes an inactive snapshot usable again; a harmless no-op on an active one. When its
    /// image was removed meanwhile, it is pulled again (`pending` → `pulling` → `active`).
    pub async fn activate(&self, who: &Principal, id_or_name: &str) -> Result<SnapshotDto, SnapshotError> {
        let mut s = self.find_to_change(who, id_or_name, "activate").await?;
        if !s.state.can_activate() {
            return Err(wrong_state("activate", &s, "; only inactive snapshots can be activated"));
        }
        if s.state == SnapshotState::Active {
            return Ok(self.dto(&s));
        }
        let image_present = s
            .image_digest
            .as_deref()
            .and_then(|d| d.parse::<Digest>().ok())
            .is_some_and(|d| self.inner.images.image(&d).is_some());
        let now = now_millis();
        s.updated_at = now;
        s.last_used_at = Some(now); // restart the inactivity clock
        s.state = if image_present { SnapshotState::Active } else { SnapshotState::Pending };
        if !self
            .inner
            .store
            .update_snapshot_if(&s, &[SnapshotState::Inactive])
            .await
            .map_err(store("activate snapshot"))?
        {
            return Err(self.moved_on("activate", who, id_or_name).await);
        }
        if s.state == SnapshotState::Pending {
            self.spawn_pull(s.id.clone());
        }
        tracing::info!(snapshot_id = %s.id, state = %s.state, "snapshot activated");
        Ok(self.dto(&s))
    }

    /// Makes an active snapshot unavailable for new sandboxes (kept on disk).
    pub async fn deactivate(&self, who: &Principal, id_or_name: &str) -> Result<(), SnapshotError> {
        let mut s = self.find_to_change(who, id_or_name, "deactivate").await?;
        if !s.state.can_deactivate() {
            return Err(wrong_state("deactivate", &s, "; only active snapshots can be deactivated"));
        }
        if s.state == SnapshotState::Inactive {
            return Ok(());
        }
        s.state = SnapshotState::Inactive;
        s.updated_at = now_millis();
        if !self
            .inner
            .store
            .update_snapshot_if(&s, &[SnapshotState::Active])
            .await
            .map_err(store("deactivate snapshot"))?
        {
            return Err(self.moved_on("deactivate", who, id_or_name).await);
        }
        tracing::info!(snapshot_id = %s.id, "snapshot deactivated");
        Ok(())
    }

    /// Pulls an active snapshot's image name again and pins the digest it names now, in
    /// place (same id and name; `cove image bootstrap` re-pins the general snapshots of a
    /// rebuilt image this way). The snapshot stays `active` on its old image until the new
    /// one is unpacked, so it is never missing; sandboxes already running keep the image
    /// they started from (their records reference it, so it is collected only after them).
    /// A general snapshot only for an admin key, like every change to one.
    pub async fn pull_again(&self, who: &Principal, id_or_name: &str) -> Result<SnapshotDto, SnapshotError> {
        let s = self.find_to_change(who, id_or_name, "pull again").await?;
        if s.build.is_some() {
            return Err(SnapshotError::Invalid(format!(
                "snapshot {} was built from a Dockerfile: it has no image name to pull again",
                s.name
            )));
        }
        if s.state != SnapshotState::Active {
            return Err(wrong_state("pull again", &s, "; only an active snapshot is pulled again"));
        }
        let image = ImageRef::parse_pinned(&s.image_name)?;
        let pulled = self.pull_for_org(&s.org_id, &image, disk_bytes(s.disk)).await.map_err(|reason| {
            SnapshotError::PullFailed { name: s.name.clone(), image: s.image_name.clone(), reason }
        })?;
        let digest = pulled.record.manifest_digest.to_string();
        if s.image_digest.as_deref() == Some(digest.as_str()) {
            return Ok(self.dto(&s));
        }
        let old = s.image_digest.clone();
        let mut n = s.clone();
        // An entrypoint taken from the old image follows the image; one the snapshot was
        // created with stays.
        let from_old_image = old
            .as_deref()
            .and_then(|d| d.parse::<Digest>().ok())
            .and_then(|d| self.inner.images.image(&d))
            .map(|i| entrypoint_from_image(&i.config));
        if n.entrypoint.is_none() || n.entrypoint == from_old_image {
            n.entrypoint = Some(entrypoint_from_image(&pulled.record.config));
        }
        n.image_digest = Some(digest);
        n.size_bytes = Some(i64::try_from(pulled.record.size_bytes).unwrap_or(i64::MAX));
        n.error_reason = None;
        n.updated_at = now_millis();
        let written =
            self.inner.store.update_snapshot_if(&n, &[SnapshotState::Active]).await.map_err(store("re-pin snapshot"));
        drop(pulled.lease);
        let this = self.clone();
        if !written? {
            tokio::spawn(async move { this.collect_garbage().await });
            return Err(self.moved_on("pull again", who, id_or_name).await);
        }
        tracing::info!(snapshot_id = %n.id, name = %n.name, old = ?old, new = ?n.image_digest, "snapshot re-pinned");
        // The old image goes once no sandbox and no other snapshot uses it.
        tokio::spawn(async move { this.collect_garbage().await });
        Ok(self.dto(&n))
    }

    /// Deletes the record at once and frees its image in the background.
    pub async fn delete(&self, who: &Principal, id_or_name: &str) -> Result<(), SnapshotError> {
        let mut s = self.find_to_change(who, id_or_name, "delete").await?;
        if !s.state.can_delete() {
            return Err(wrong_state("delete", &s, "; it is already being removed"));
        }
        let from = s.state;
        s.state = SnapshotState::Removing;
        s.updated_at = now_millis();
        if !self.inner.store.update_snapshot_if(&s, &[from]).await.map_err(store("delete snapshot"))? {
            return Err(self.moved_on("delete", who, id_or_name).await);
        }
        self.inner.store.delete_snapshot(&s.id).await.map_err(store("delete snapshot"))?;
        self.inner.builds.remove_log(&s.id);
        tracing::info!(snapshot_id = %s.id, name = %s.name, "snapshot deleted");
        // No receiver (no warm pool) is no error.
        let _ = self.inner.deleted.send(s.id.clone());
        let this = self.clone();
        tokio::spawn(async move { this.collect_garbage().await });
        Ok(())
    }

    async fn moved_on(&self, verb: &'static str, who: &Principal, id_or_name: &str) -> SnapshotError {
        match self.find(who, id_or_name).await {
            Ok(s) => wrong_state(verb, &s, "; its state changed meanwhile, try again"),
            Err(e) => e,
        }
    }

    /// Resumes work a previous run left unfinished: pulls restart, half-deleted snapshots
    /// finish deleting, and unreferenced images are collected.
    pub async fn resume(&self) -> Result<(), SnapshotError> {
        let st = &self.inner.store;
        for s in st
            .snapshots_in_states_for_job(&[SnapshotState::Removing])
            .await
            .map_err(store("find removing snapshots"))?
        {
            st.delete_snapshot(&s.id).await.map_err(store("finish deleting snapshot"))?;
        }
        // Builds are durable jobs: one the last run left in `building` starts over.
        let pending = st
            .snapshots_in_states_for_job(&[SnapshotState::Pending, SnapshotState::Pulling, SnapshotState::Building])
            .await
            .map_err(store("find unfinished pulls and builds"))?;
        self.collect_garbage().await;
        for s in pending {
            tracing::info!(snapshot_id = %s.id, state = %s.state, "resuming a pull or build interrupted by a restart");
            if s.build.is_some() {
                self.inner.builds.reset_log(&s.id);
            }
            self.spawn_pull(s.id);
        }
        Ok(())
    }

    /// Deletes images and blobs that no snapshot references. The built-in registry's
    /// manifests and layers keep their blobs but not an unpacked tree: an image pushed there
    /// is unpacked when a snapshot first uses it and freed when no snapshot does.
    pub async fn collect_garbage(&self) {
        let _g = self.inner.gc.lock().await;
        // Read under the image store's lock (see `ImageStore::gc`).
        let roots = || async {
            match self.inner.store.referenced_images().await {
                Ok(mut refs) => {
                    refs.extend(self.pinned().keys().cloned());
                    let keep = refs.iter().filter_map(|d| d.parse().ok()).collect();
                    let blobs = self.inner.registry.get().map(|r| r.gc_roots()).unwrap_or_default();
                    Some((keep, blobs))
                }
                Err(e) => {
                    tracing::error!(error = %e, "garbage collection skipped: cannot list referenced images");
                    None
                }
            }
        };
        self.inner.images.gc(roots).await;
    }

    /// The build log of a built snapshot, from the beginning; `follow` keeps the stream open
    /// until the build ends.
    pub async fn build_logs(
        &self,
        who: &Principal,
        id_or_name: &str,
        follow: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + use<>, SnapshotError> {
        let s = self.find(who, id_or_name).await?;
        if s.build.is_none() {
            return Err(SnapshotError::NoBuildInfo { name: s.name, image: s.image_name });
        }
        Ok(self.inner.builds.log_stream(&s.id, follow))
    }

    /// The id of a built snapshot (for its build-logs URL).
    pub async fn built_snapshot_id(&self, who: &Principal, id_or_name: &str) -> Result<String, SnapshotError> {
        let s = self.find(who, id_or_name).await?;
        if s.build.is_none() {
            return Err(SnapshotError::NoBuildInfo { name: s.name, image: s.image_name });
        }
        Ok(s.id)
    }

    /// Pulls `image` as organization `org` sees it: from this server's own registry (the
    /// org's repositories), else from its source with the org's matching registry credentials.
    /// Its root filesystem may take at most `max_unpacked_bytes` (see [`disk_bytes`]).
    pub async fn pull_for_org(
        &self,
        org: &str,
        image: &ImageRef,
        max_unpacked_bytes: u64,
    ) -> Result<cove_image::Pulled, String> {
        if let Some(reg) = self.inner.registry.get().filter(|reg| reg.is_local(image)) {
            return match reg.resolve_for_snapshot(org, image) {
                Ok(d) => {
                    self.inner.images.import(&d, max_unpacked_bytes).await.map_err(|e| cove_types::error::chain(&e))
                }
                Err(e) => Err(format!("{image}: {}", cove_types::error::chain(&e))),
            };
        }
        match self.inner.docker_registries.get() {
            Some(regs) => regs.pull(&self.inner.images, org, image, max_unpacked_bytes).await,
            None => {
                self.inner.images.pull(image, None, max_unpacked_bytes).await.map_err(|e| cove_types::error::chain(&e))
            }
        }
    }

    /// The build service (sandboxes built from an `Image` use it too).
    pub fn builds(&self) -> &BuildService {
        &self.inner.builds
    }

    /// Connects the built-in registry (once, at start): images named after its host are
    /// imported from it, and what it references survives garbage collection.
    pub fn attach_registry(&self, registry: crate::registry::RegistryService) {
        let _ = self.inner.registry.set(registry);
    }

    /// Connects the organizations' private registries (once, at start): pulls use the
    /// credentials of the one matching the image.
    pub fn attach_docker_registries(&self, registries: super::registries::DockerRegistryService) {
        let _ = self.inner.docker_registries.set(registries);
    }

    /// The ids of snapshots deleted from now on (the warm pool removes their sandboxes).
    pub fn deleted_snapshots(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.deleted.subscribe()
    }

    fn pinned(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner.pinned.lock().expect("pin map is never poisoned")
    }

    /// Keeps the image `digest` from garbage collection until as many [`Self::unpin_image`]s
    /// (for sandboxes that exist before they are recorded: the warm pool's).
    pub fn pin_image(&self, digest: &str) {
        *self.pinned().entry(digest.to_string()).or_default() += 1;
    }

    /// Undoes one [`Self::pin_image`].
    pub fn unpin_image(&self, digest: &str) {
        let mut pinned = self.pinned();
        if let Some(n) = pinned.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                pinned.remove(digest);
            }
        }
    }

    /// Every `interval`, moves snapshots unused for `after` to inactive. Runs forever.
    pub async fn run_inactivity_sweeper(self, after: Duration, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let now = now_millis();
            let before = now - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
            match self.inner.store.deactivate_unused(before, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "deactivated snapshots unused for the inactivity period"),
                Err(e) => tracing::error!(error = %e, "inactivity sweep failed"),
            }
        }
    }

    fn spawn_pull(&self, id: String) {
        if !self.inner.running.lock().expect("job set is never poisoned").insert(id.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.pull_job(&id).await;
            this.inner.running.lock().expect("job set is never poisoned").remove(&id);
        });
    }

    #[tracing::instrument(skip(self))]
    async fn pull_job(&self, id: &str) {
        let st = &self.inner.store;
        let mut s = match st.get_snapshot_for_job(id).await {
            Ok(Some(s)) if s.state.can_start_pull() => s,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "pull job cannot read its snapshot");
                return;
            }
        };
        let working = if s.build.is_some() { SnapshotState::Building } else { SnapshotState::Pulling };
        s.state = working;
        s.updated_at = now_millis();
        match st
            .update_snapshot_if(&s, &[SnapshotState::Pending, SnapshotState::Pulling, SnapshotState::Building])
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(error = %e, "pull job cannot record the pulling state");
                return;
            }
        }
        let result = match &s.build {
            Some(b) => {
                let r = self
                    .inner
                    .builds
                    .build(&s.id, &s.org_id, b, self, disk_bytes(s.disk))
                    .await
                    .map_err(|e| cove_types::error::chain(&e));
                let last = match &r {
                    Ok(_) => "Build finished".to_string(),
                    Err(e) => format!("Build failed: {}", e.lines().next().unwrap_or_default()),
                };
                self.inner.builds.finish_log(&s.id, &last);
                r
            }
            None => match ImageRef::parse_pinned(&s.image_name) {
                Ok(r) => self.pull_for_org(&s.org_id, &r, disk_bytes(s.disk)).await,
                Err(e) => Err(e.to_string()),
            },
        };
        let mut lease = None;
        match result {
            Ok(pulled) => {
                let rec = &pulled.record;
                s.state = SnapshotState::Active;
                s.error_reason = None;
                s.size_bytes = Some(i64::try_from(rec.size_bytes).unwrap_or(i64::MAX));
                s.image_digest = Some(rec.manifest_digest.to_string());
                if s.entrypoint.is_none() {
                    s.entrypoint = Some(entrypoint_from_image(&rec.config));
                }
                lease = Some(pulled.lease);
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "snapshot pull or build failed");
                s.state = if s.build.is_some() { SnapshotState::BuildFailed } else { SnapshotState::Error };
                s.error_reason = Some(reason);
            }
        }
        s.updated_at = now_millis();
        match st.update_snapshot_if(&s, &[working]).await {
            Ok(true) => tracing::info!(state = %s.state, "snapshot pull finished"),
            Ok(false) => {
                // Deleted while pulling: drop what we fetched.
                drop(lease);
                self.collect_garbage().await;
            }
            Err(e) => tracing::error!(error = %e, "pull job cannot record its result; it resumes at the next start"),
        }
    }
}

/// A disk size in GiB (a snapshot's or sandbox's `disk`) in bytes: what its image may unpack
/// to at most.
pub fn disk_bytes(gib: i64) -> u64 {
    u64::try_from(gib).unwrap_or(0).saturating_mul(1 << 30)
}

/// A resource value from a request: `default` when absent, else checked against `min..=max`.
pub fn resource(name: &str, v: Option<i64>, default: i64, min: i64, max: i64) -> Result<i64, SnapshotError> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        let unit = match name {
            "memory" | "disk" => " GiB",
            _ => "",
        };
        return Err(SnapshotError::Invalid(format!("{name} must be between {min} and {max}{unit} (got {v})")));
    }
    Ok(v)
}

fn wrong_state(verb: &'static str, s: &SnapshotRecord, hint: &'static str) -> SnapshotError {
    SnapshotError::WrongState { verb, name: s.name.clone(), state: s.state, hint }
}

/// The image's own entrypoint (with its cmd as arguments) when it has one, else
/// `sleep infinity`: a snapshot's sandboxes need a long-running first process, and an
/// image that only has a `Cmd` (such as `python3`) would exit at once.
pub fn entrypoint_from_image(cfg: &cove_image::oci::RunConfig) -> Vec<String> {
    match cfg.entrypoint.as_ref().filter(|e| !e.is_empty()) {
        Some(ep) => ep.iter().chain(cfg.cmd.iter().flatten()).cloned().collect(),
        None => DEFAULT_ENTRYPOINT.iter().map(|s| s.to_string()).collect(),
    }
}

/// The wire form of a record.
pub fn to_dto(s: &SnapshotRecord) -> SnapshotDto {
    SnapshotDto {
        id: s.id.clone(),
        organization_id: s.org_id.clone(),
        general: s.general,
        name: s.name.clone(),
        image_name: s.image_name.clone(),
        state: s.state,
        size: s.size_bytes.map(|b| ((b as f64 / GIB) * 10_000.0).round() / 10_000.0),
        entrypoint: s.entrypoint.clone(),
        cpu: s.cpu,
        gpu: s.gpu,
        gpu_type: s.gpu_type.clone(),
        mem: s.mem,
        disk: s.disk,
        error_reason: s.error_reason.clone(),
        created_at: iso(s.created_at),
        updated_at: iso(s.updated_at),
        last_used_at: s.last_used_at.map(iso),
        region_ids: vec![s.region_id.clone()],
        ref_: s.image_digest.clone(),
        sandbox_class: "container".into(),
        source_sandbox_id: None,
        build_info: s.build.as_ref().map(|b| BuildInfoDto {
            dockerfile_content: b.dockerfile.clone(),
            context_hashes: b.context_hashes.clone(),
            created_at: iso(s.created_at),
            updated_at: iso(s.updated_at),
            snapshot_ref: b.snapshot_ref(),
        }),
    }
}

/// Checks a `buildInfo` before it is recorded: the Dockerfile must parse and plan within
/// `cove_build::limits` (size, instructions, expansions, paths; the error names the line and
/// the limit), and context hashes must be plain hex names. Plan errors that may depend on
/// the base image's config (`${VAR:?}` with VAR from its ENV) are left to the build.
pub fn validate_build(info: cove_types::dto::CreateBuildInfo) -> Result<BuildSpec, SnapshotError> {
    if info.dockerfile_content.trim().is_empty() {
        return Err(SnapshotError::Invalid("buildInfo.dockerfileContent is empty".into()));
    }
    let invalid = |e: &dyn std::error::Error| {
        SnapshotError::Invalid(format!("invalid Dockerfile: {}", cove_types::error::chain(e)))
    };
    let dockerfile = cove_build::dockerfile::parse(&info.dockerfile_content).map_err(|e| invalid(&e))?;
    let plan = cove_build::plan::Plan::new(&dockerfile, &Default::default(), None).map_err(|e| invalid(&e))?;
    match plan.check() {
        Err(e) if e.is_limit() => return Err(invalid(&e)),
        Err(e) => tracing::debug!(error = %e, "Dockerfile check left to the build (it may need the base image)"),
        Ok(()) => {}
    }
    if let Some(h) = info
        .context_hashes
        .iter()
        .find(|h| h.is_empty() || h.len() > 128 || !h.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(SnapshotError::Invalid(format!(
            "invalid context hash {h:?}: expected the hex digest the SDK computes"
        )));
    }
    Ok(BuildSpec { dockerfile: info.dockerfile_content, context_hashes: info.context_hashes })
}

#[async_trait::async_trait]
impl super::builds::ImageSource for SnapshotService {
    async fn pull(&self, org: &str, image: &ImageRef, max_unpacked_bytes: u64) -> Result<cove_image::Pulled, String> {
        self.pull_for_org(org, image, max_unpacked_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cove_image::oci::RunConfig;

    #[test]
    fn an_image_without_entrypoint_runs_sleep_infinity_even_if_it_has_a_cmd() {
        let cfg = RunConfig { cmd: Some(vec!["python3".into()]), ..Default::default() };
        assert_eq!(entrypoint_from_image(&cfg), ["sleep", "infinity"]);
    }

    #[test]
    fn an_image_entrypoint_keeps_its_cmd_as_arguments() {
        let cfg = RunConfig {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            cmd: Some(vec!["nginx".into(), "-g".into()]),
            ..Default::default()
        };
        assert_eq!(entrypoint_from_image(&cfg), ["/docker-entrypoint.sh", "nginx", "-g"]);
    }

    #[test]
    fn resources_out_of_range_name_the_field_and_the_bounds() {
        let e = resource("memory", Some(0), 1, 1, 1024).unwrap_err().to_string();
        assert_eq!(e, "memory must be between 1 and 1024 GiB (got 0)");
        assert_eq!(resource("cpu", None, 1, 1, 128).unwrap(), 1);
    }

    fn build_info(dockerfile: &str) -> cove_types::dto::CreateBuildInfo {
        serde_json::from_value(serde_json::json!({ "dockerfileContent": dockerfile, "contextHashes": [] })).unwrap()
    }

    #[test]
    fn a_dockerfile_past_a_build_limit_is_refused_at_creation_naming_the_limit() {
        let mut df = format!("FROM scratch\nARG A0={}\n", "x".repeat(64));
        for i in 1..=10 {
            let p = i - 1;
            df.push_str(&format!("ARG A{i}=$A{p}$A{p}$A{p}$A{p}\n"));
        }
        let e = validate_build(build_info(&df)).unwrap_err();
        assert_eq!(e.to_string(), "invalid Dockerfile: dockerfile line 8: expanded value exceeds 64 KiB");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let deep = format!("FROM scratch\nCOPY a {}/\n", "/d".repeat(5000));
        let e = validate_build(build_info(&deep)).unwrap_err().to_string();
        assert!(e.contains("COPY destination") && e.contains("10001 bytes long"), "{e}");
        let big = format!("FROM scratch\n{}", "# x\n".repeat(300_000));
        assert!(validate_build(build_info(&big)).unwrap_err().to_string().contains("over the limit of 1 MiB"));
    }

    #[test]
    fn a_dockerfile_whose_variables_may_come_from_the_base_image_is_accepted_at_creation() {
        validate_build(build_info("FROM python:3.12\nENV X=${FROM_BASE:?set-by-the-image}\n")).unwrap();
    }
}
