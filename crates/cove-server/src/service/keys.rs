//! Organizations and API keys: authentication, the bootstrap admin key, key management.
//!
//! Keys are 160-bit random secrets shown once. Only their HMAC-SHA256 under the server
//! secret `<data-dir>/api-keys.key` is stored, so a chosen (possibly weak) `COVE_API_KEY`
//! cannot be guessed offline from a copy of `cove.db` alone. Rows from before that were bare
//! sha256; they still authenticate and are re-hashed the first time their key is presented
//! (the configured bootstrap key at start).
//!
//! Rules: a key sees and revokes only its own organization's keys (another organization's
//! key id is "not found"); only an admin key may revoke an admin key; the server's last
//! admin key cannot be revoked; the bootstrap key is registered or re-enabled at every start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cove_types::ErrorKind;
use cove_types::dto::{ApiKeyDto, CreatedApiKey, OrganizationDto};
use sha2::Digest as _;

use super::{iso, now_millis};
use crate::store::{ApiKeyRecord, KeyHashScheme, Organization, Revoked, Store, StoreError};

/// The key file, in the data directory.
pub const SECRET_FILE: &str = "api-keys.key";

/// Who is calling: resolved from the bearer key on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The caller's organization: every object they touch is scoped to it.
    pub org_id: String,
    /// The key used.
    pub key_id: String,
    /// May create organizations, revoke admin keys and (where the server allows it) create
    /// privileged sandboxes.
    pub admin: bool,
}

impl Principal {
    /// Whether this caller may create a privileged sandbox: the server must have been started
    /// with `--allow-privileged` (`allowed_by_server`) AND the key must be an admin key.
    pub fn may_create_privileged(&self, allowed_by_server: bool) -> Result<(), KeyError> {
        let missing = match (allowed_by_server, self.admin) {
            (true, true) => return Ok(()),
            (false, true) => "the server option --allow-privileged",
            (true, false) => "an admin API key",
            (false, false) => "the server option --allow-privileged and an admin API key",
        };
        Err(KeyError::Privileged { missing })
    }
}

/// A failed key or organization operation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No bearer token.
    #[error("missing API key: send it as 'Authorization: Bearer <key>'")]
    Missing,
    /// Unknown or revoked key.
    #[error("invalid or revoked API key")]
    Invalid,
    /// Not an admin key.
    #[error("only an admin API key may {action}")]
    NotAdmin {
        /// What was attempted.
        action: &'static str,
    },
    /// A privileged sandbox without what it needs.
    #[error("privileged sandboxes need {missing}")]
    Privileged {
        /// The option and/or kind of key that is missing.
        missing: &'static str,
    },
    /// Revoking the last admin key would leave the server without one.
    #[error(
        "cannot revoke api key {id}: it is this server's last admin API key; start the server once with \
         another COVE_API_KEY (which becomes an admin key) before revoking this one"
    )]
    LastAdmin {
        /// The key.
        id: String,
    },
    /// Bad name.
    #[error("{what} name must be 1 to 100 printable characters")]
    BadName {
        /// `api key` or `organization`.
        what: &'static str,
    },
    /// Unknown key id.
    #[error("api key {id} not found")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The key file could not be read.
    #[error("read the api key secret {path}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("write the api key secret {path}")]
    WriteSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No random bytes for a new secret.
    #[error("make the api key secret: {0}")]
    Random(getrandom::Error),
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

impl KeyError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Missing | Self::Invalid => ErrorKind::Unauthenticated,
            Self::NotAdmin { .. } | Self::Privileged { .. } => ErrorKind::PermissionDenied,
            Self::LastAdmin { .. } => ErrorKind::FailedPrecondition,
            Self::BadName { .. } => ErrorKind::InvalidArgument,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::ReadSecret { .. } | Self::WriteSecret { .. } | Self::Random(_) => ErrorKind::Internal,
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> KeyError {
    move |source| KeyError::Store { op, source }
}

/// The bare sha256 hex keys were stored as before migration 0006: only computed to find
/// such rows, never written.
fn legacy_hash(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn new_key() -> String {
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).expect("the OS random source is available");
    format!("cove_{}", hex::encode(b))
}

fn valid_name(n: &str) -> bool {
    !n.trim().is_empty() && n.chars().count() <= 100 && !n.chars().any(char::is_control)
}

/// How often a key's `lastUsedAt` is written: every request would put a write transaction
/// on the hot path of every toolbox call.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// How long a successful key lookup is reused. Revocation through this server clears it at
/// once; the cache only spares the hot path (every toolbox call) a database round trip.
const AUTH_CACHE_MS: i64 = 10_000;

/// The server secret keys are hashed under; never printed.
#[derive(Clone)]
struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Authentication and key management.
#[derive(Debug, Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    secret: Secret,
    /// Key id → when its use was last written.
    touched: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Key hash → (principal, when looked up).
    cache: Arc<std::sync::Mutex<std::collections::HashMap<String, (Principal, i64)>>>,
}

impl KeyService {
    /// A service over `store` whose keys are hashed under `<data_dir>/api-keys.key`, made
    /// (0600) on first start.
    pub fn open(store: Arc<dyn Store>, data_dir: &Path) -> Result<Self, KeyError> {
        use crate::keyfile::{KeyFileError, load_or_create};
        let secret = load_or_create(&data_dir.join(SECRET_FILE), "the secret api keys are hashed under").map_err(
            |e| match e {
                KeyFileError::Read(path, source) => KeyError::ReadSecret { path, source },
                KeyFileError::Write(path, source) => KeyError::WriteSecret { path, source },
                KeyFileError::Random(e) => KeyError::Random(e),
            },
        )?;
        Ok(Self::new(store, secret))
    }

    /// A service over `store` hashing keys under `secret`.
    pub fn new(store: Arc<dyn Store>, secret: [u8; 32]) -> Self {
        KeyService { store, secret: Secret(secret), touched: Arc::default(), cache: Arc::default() }
    }

    /// The stored form of a key.
    fn hash(&self, key: &str) -> String {
        hex::encode(crate::s3::sigv4::hmac_sha256(&self.secret.0, key.as_bytes()))
    }

    /// Ensures the bootstrap organization and admin key exist. With `configured` (from
    /// `COVE_API_KEY`) that key is registered if new, and re-enabled (and made admin again)
    /// if it was revoked; without it, a key is generated when the server has no live admin
    /// key. Never fails because the key already exists. Returns a generated key so the
    /// caller can show it once.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Option<String>, KeyError> {
        let org = match self.store.first_org().await.map_err(store("find bootstrap organization"))? {
            Some(o) => o,
            None => {
                let o = Organization {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: "default".into(),
                    created_at: now_millis(),
                };
                self.store.insert_org(&o).await.map_err(store("create bootstrap organization"))?;
                o
            }
        };
        match configured {
            Some(k) => {
                self.ensure_admin_key(&org.id, k).await?;
                Ok(None)
            }
            None => {
                if self.store.count_admin_keys().await.map_err(store("count admin api keys"))? > 0 {
                    return Ok(None);
                }
                let key = new_key();
                let rec = self.insert(&org.id, "bootstrap admin", &key, true).await?;
                tracing::info!(key_id = %rec.id, org_id = %org.id, "generated a bootstrap admin api key");
                Ok(Some(key))
            }
        }
    }

    /// Registers `key` as a live admin key, whatever state a row of it is in.
    async fn ensure_admin_key(&self, org_id: &str, key: &str) -> Result<(), KeyError> {
        let hash = self.hash(key);
        let found = match self
            .store
            .api_key_by_hash_including_revoked(KeyHashScheme::HmacSha256, &hash)
            .await
            .map_err(store("look up bootstrap key"))?
        {
            Some(r) => Some(r),
            None => self
                .store
                .api_key_by_hash_including_revoked(KeyHashScheme::Sha256, &legacy_hash(key))
                .await
                .map_err(store("look up bootstrap key"))?,
        };
        let Some(rec) = found else {
            let rec = self.insert(org_id, "bootstrap admin", key, true).await?;
            tracing::info!(key_id = %rec.id, org_id, "registered the configured bootstrap admin api key");
            return Ok(());
        };
        if rec.hash_scheme != KeyHashScheme::HmacSha256 {
            self.store
                .rehash_api_key(&rec.id, KeyHashScheme::HmacSha256, &hash)
                .await
                .map_err(store("rehash bootstrap key"))?;
            tracing::info!(key_id = %rec.id, "re-hashed the bootstrap admin api key under the server secret");
        }
        if rec.revoked_at.is_some() || !rec.admin {
            self.store.restore_admin_key(&rec.id).await.map_err(store("re-enable bootstrap key"))?;
            tracing::warn!(
                key_id = %rec.id,
                org_id = %rec.org_id,
                was_revoked = rec.revoked_at.is_some(),
                was_admin = rec.admin,
                "the configured bootstrap api key was re-enabled as an admin key"
            );
        }
        Ok(())
    }

    async fn insert(&self, org_id: &str, name: &str, key: &str, admin: bool) -> Result<ApiKeyRecord, KeyError> {
        let rec = ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org_id.to_string(),
            name: name.to_string(),
            key_hash: self.hash(key),
            hash_scheme: KeyHashScheme::HmacSha256,
            prefix: key.chars().take(10).collect(),
            admin,
            created_at: now_millis(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_api_key(&rec).await.map_err(store("create api key"))?;
        Ok(rec)
    }

    /// Resolves a bearer token to its principal.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, KeyError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(KeyError::Missing)?;
        let hash = self.hash(token);
        let now = now_millis();
        if let Some((p, at)) = self.cache.lock().expect("auth cache is never poisoned").get(&hash)
            && now.saturating_sub(*at) < AUTH_CACHE_MS
        {
            return Ok(p.clone());
        }
        let rec =
            match self.store.api_key_by_hash(KeyHashScheme::HmacSha256, &hash).await.map_err(store("authenticate"))? {
                Some(r) => r,
                None => self.upgrade_legacy(token, &hash).await?.ok_or(KeyError::Invalid)?,
            };
        // Recording the last use is informational (to the minute); an error here must not
        // fail the request.
        let due = {
            let mut t = self.touched.lock().expect("touch map is never poisoned");
            let last = t.get(&rec.id).copied().unwrap_or(i64::MIN);
            (now.saturating_sub(last) >= TOUCH_INTERVAL_MS).then(|| t.insert(rec.id.clone(), now)).is_some()
        };
        if due && let Err(e) = self.store.touch_api_key(&rec.id, now).await {
            tracing::warn!(key_id = %rec.id, error = %e, "could not record api key use");
        }
        let p = Principal { org_id: rec.org_id, key_id: rec.id, admin: rec.admin };
        self.cache.lock().expect("auth cache is never poisoned").insert(hash, (p.clone(), now));
        Ok(p)
    }

    /// A live key stored as bare sha256 (before migration 0006), re-hashed now that its
    /// value is known. A failed re-hash is logged and retried at the next use: it must not
    /// lock the key's owner out.
    async fn upgrade_legacy(&self, token: &str, hash: &str) -> Result<Option<ApiKeyRecord>, KeyError> {
        let Some(rec) = self
            .store
            .api_key_by_hash(KeyHashScheme::Sha256, &legacy_hash(token))
            .await
            .map_err(store("authenticate"))?
        else {
            return Ok(None);
        };
        match self.store.rehash_api_key(&rec.id, KeyHashScheme::HmacSha256, hash).await {
            Ok(()) => tracing::info!(key_id = %rec.id, "re-hashed a legacy sha256 api key under the server secret"),
            Err(e) => tracing::warn!(key_id = %rec.id, error = %e, "could not re-hash a legacy sha256 api key"),
        }
        Ok(Some(rec))
    }

    /// Creates a key in the caller's organization.
    pub async fn create(&self, who: &Principal, name: &str) -> Result<CreatedApiKey, KeyError> {
        if !valid_name(name) {
            return Err(KeyError::BadName { what: "api key" });
        }
        let key = new_key();
        let rec = self.insert(&who.org_id, name.trim(), &key, false).await?;
        tracing::info!(key_id = %rec.id, org_id = %who.org_id, by = %who.key_id, "api key created");
        Ok(CreatedApiKey { key: dto(&rec), value: key })
    }

    /// The caller's organization's keys, without secrets.
    pub async fn list(&self, who: &Principal) -> Result<Vec<ApiKeyDto>, KeyError> {
        Ok(self.store.list_api_keys(&who.org_id).await.map_err(store("list api keys"))?.iter().map(dto).collect())
    }

    /// Revokes one of the caller's organization's keys. Another organization's key is "not
    /// found"; an admin key needs an admin caller and is never the server's last one.
    pub async fn revoke(&self, who: &Principal, id: &str) -> Result<(), KeyError> {
        let not_found = || KeyError::NotFound { id: id.to_string() };
        let target =
            self.store.get_api_key(&who.org_id, id).await.map_err(store("revoke api key"))?.ok_or_else(not_found)?;
        if target.admin && !who.admin {
            return Err(KeyError::NotAdmin { action: "revoke an admin API key" });
        }
        match self.store.revoke_api_key(&who.org_id, id, now_millis()).await.map_err(store("revoke api key"))? {
            Revoked::Done => {
                self.cache.lock().expect("auth cache is never poisoned").retain(|_, (p, _)| p.key_id != id);
                tracing::info!(key_id = %id, org_id = %who.org_id, by = %who.key_id, admin = target.admin, "api key revoked");
                Ok(())
            }
            Revoked::LastAdmin => Err(KeyError::LastAdmin { id: id.to_string() }),
            Revoked::NotFound => Err(not_found()),
        }
    }

    /// Creates an organization and its first key (admin keys only).
    pub async fn create_org(&self, who: &Principal, name: &str) -> Result<OrganizationDto, KeyError> {
        if !who.admin {
            return Err(KeyError::NotAdmin { action: "create organizations" });
        }
        if !valid_name(name) {
            return Err(KeyError::BadName { what: "organization" });
        }
        let org = Organization {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.trim().to_string(),
            created_at: now_millis(),
        };
        self.store.insert_org(&org).await.map_err(store("create organization"))?;
        let key = new_key();
        let rec = self.insert(&org.id, "initial", &key, false).await?;
        tracing::info!(org_id = %org.id, key_id = %rec.id, by = %who.key_id, "organization created");
        Ok(OrganizationDto {
            id: org.id,
            name: org.name,
            created_at: iso(org.created_at),
            api_key: Some(CreatedApiKey { key: dto(&rec), value: key }),
        })
    }
}

fn dto(r: &ApiKeyRecord) -> ApiKeyDto {
    ApiKeyDto {
        id: r.id.clone(),
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        organization_id: r.org_id.clone(),
        created_at: iso(r.created_at),
        last_used_at: r.last_used_at.map(iso),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, Kind, each_store};

    each_store!(
        a_generated_bootstrap_key_is_returned_once_and_then_authenticates_as_admin,
        a_configured_bootstrap_key_is_stored_as_an_hmac_not_its_bare_sha256,
        keys_do_not_authenticate_under_another_server_secret,
        the_secret_file_is_made_once_and_read_back_at_the_next_start,
        starting_twice_with_the_same_configured_key_registers_it_once,
        a_revoked_configured_bootstrap_key_is_re_enabled_at_the_next_start,
        a_bootstrap_key_revoked_in_the_database_is_re_enabled_at_the_next_start,
        a_new_key_is_generated_when_keys_exist_but_no_live_admin_key,
        the_last_admin_key_cannot_be_revoked,
        a_member_key_cannot_revoke_an_admin_key_of_its_own_organization,
        a_key_of_another_organization_is_neither_listed_nor_revocable_and_looks_absent,
        only_admins_create_organizations_whose_keys_are_not_admin,
        a_revoked_key_stops_working_and_listing_never_shows_secrets,
        a_key_stored_as_bare_sha256_still_authenticates_and_is_rehashed_on_first_use,
        a_configured_bootstrap_key_stored_as_bare_sha256_is_rehashed_at_start,
    );

    async fn svc(kind: Kind) -> (tempfile::TempDir, KeyService) {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyService::open(testing::open(kind, d.path()).await, d.path()).unwrap();
        (d, keys)
    }

    /// The same database and secret, as after a restart (no cached lookups).
    fn restarted(s: &KeyService) -> KeyService {
        KeyService::new(s.store.clone(), s.secret.0)
    }

    /// A key row the way servers before migration 0006 wrote it.
    async fn insert_legacy(s: &KeyService, org_id: &str, key: &str, admin: bool) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let rec = ApiKeyRecord {
            id: id.clone(),
            org_id: org_id.into(),
            name: "old".into(),
            key_hash: legacy_hash(key),
            hash_scheme: KeyHashScheme::Sha256,
            prefix: key.chars().take(10).collect(),
            admin,
            created_at: 1,
            last_used_at: None,
            revoked_at: None,
        };
        s.store.insert_api_key(&rec).await.unwrap();
        id
    }

    async fn admin(s: &KeyService) -> (String, Principal) {
        let key = s.bootstrap(None).await.unwrap().expect("first start generates a key");
        let p = s.authenticate(Some(&key)).await.unwrap();
        (key, p)
    }

    async fn a_generated_bootstrap_key_is_returned_once_and_then_authenticates_as_admin(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (_key, p) = admin(&s).await;
        assert!(s.bootstrap(None).await.unwrap().is_none(), "second start generates nothing");
        assert!(p.admin);
    }

    async fn a_configured_bootstrap_key_is_stored_as_an_hmac_not_its_bare_sha256(kind: Kind) {
        let (_d, s) = svc(kind).await;
        assert!(s.bootstrap(Some("my-secret-key")).await.unwrap().is_none());
        s.authenticate(Some("my-secret-key")).await.unwrap();
        assert!(matches!(s.authenticate(Some("wrong")).await, Err(KeyError::Invalid)));
        assert!(matches!(s.authenticate(None).await, Err(KeyError::Missing)));
        let keys = s.store.list_api_keys(&s.store.first_org().await.unwrap().unwrap().id).await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].hash_scheme, KeyHashScheme::HmacSha256);
        assert_eq!(keys[0].key_hash.len(), 64);
        assert_ne!(keys[0].key_hash, legacy_hash("my-secret-key"));
        assert_ne!(keys[0].key_hash, "my-secret-key");
    }

    async fn keys_do_not_authenticate_under_another_server_secret(kind: Kind) {
        let (_d, s) = svc(kind).await;
        s.bootstrap(Some("my-secret-key")).await.unwrap();
        let other = KeyService::new(s.store.clone(), [9u8; 32]);
        assert!(matches!(other.authenticate(Some("my-secret-key")).await, Err(KeyError::Invalid)));
    }

    async fn the_secret_file_is_made_once_and_read_back_at_the_next_start(kind: Kind) {
        use std::os::unix::fs::PermissionsExt as _;
        let (d, s) = svc(kind).await;
        s.bootstrap(Some("my-secret-key")).await.unwrap();
        let file = d.path().join(SECRET_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let again = KeyService::open(s.store.clone(), d.path()).unwrap();
        again.authenticate(Some("my-secret-key")).await.unwrap();
    }

    async fn starting_twice_with_the_same_configured_key_registers_it_once(kind: Kind) {
        let (_d, s) = svc(kind).await;
        s.bootstrap(Some("my-secret-key")).await.unwrap();
        restarted(&s).bootstrap(Some("my-secret-key")).await.unwrap();
        assert_eq!(s.store.count_admin_keys().await.unwrap(), 1);
    }

    async fn a_revoked_configured_bootstrap_key_is_re_enabled_at_the_next_start(kind: Kind) {
        let (_d, s) = svc(kind).await;
        s.bootstrap(Some("key-a")).await.unwrap();
        // A second configured key makes the first revocable.
        let s = restarted(&s);
        s.bootstrap(Some("key-b")).await.unwrap();
        let b = s.authenticate(Some("key-b")).await.unwrap();
        let a = s.authenticate(Some("key-a")).await.unwrap();
        s.revoke(&b, &a.key_id).await.unwrap();
        assert!(matches!(s.authenticate(Some("key-a")).await, Err(KeyError::Invalid)));
        let s = restarted(&s);
        s.bootstrap(Some("key-a")).await.expect("a revoked bootstrap key never fails the start");
        let a2 = s.authenticate(Some("key-a")).await.unwrap();
        assert_eq!(a2.key_id, a.key_id, "the same row is re-enabled");
        assert!(a2.admin);
    }

    async fn a_bootstrap_key_revoked_in_the_database_is_re_enabled_at_the_next_start(kind: Kind) {
        let (_d, s) = svc(kind).await;
        s.bootstrap(Some("key-a")).await.unwrap();
        let a = s.authenticate(Some("key-a")).await.unwrap();
        // Another admin row, so that the store lets the bootstrap key go.
        let mut twin = s.store.get_api_key(&a.org_id, &a.key_id).await.unwrap().unwrap();
        twin.id = "twin".into();
        twin.key_hash = "0".repeat(64);
        s.store.insert_api_key(&twin).await.unwrap();
        assert_eq!(s.store.revoke_api_key(&a.org_id, &a.key_id, 5).await.unwrap(), Revoked::Done);
        let s = restarted(&s);
        assert!(matches!(s.authenticate(Some("key-a")).await, Err(KeyError::Invalid)));
        s.bootstrap(Some("key-a")).await.expect("a revoked bootstrap key never fails the start");
        assert!(s.authenticate(Some("key-a")).await.unwrap().admin);
    }

    async fn a_new_key_is_generated_when_keys_exist_but_no_live_admin_key(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let org = Organization { id: "o".into(), name: "default".into(), created_at: 0 };
        s.store.insert_org(&org).await.unwrap();
        insert_legacy(&s, "o", "cove_member", false).await;
        let fresh = s.bootstrap(None).await.unwrap().expect("a replacement admin key is generated");
        assert!(s.authenticate(Some(&fresh)).await.unwrap().admin);
        assert!(restarted(&s).bootstrap(None).await.unwrap().is_none(), "and only once");
    }

    async fn the_last_admin_key_cannot_be_revoked(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (key, a) = admin(&s).await;
        let e = s.revoke(&a, &a.key_id).await.unwrap_err();
        assert!(matches!(e, KeyError::LastAdmin { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("last admin API key"), "{e}");
        assert!(s.authenticate(Some(&key)).await.unwrap().admin);
    }

    async fn a_member_key_cannot_revoke_an_admin_key_of_its_own_organization(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (key, a) = admin(&s).await;
        let member = s.create(&a, "member").await.unwrap();
        let m = s.authenticate(Some(&member.value)).await.unwrap();
        assert_eq!(m.org_id, a.org_id);
        let e = s.revoke(&m, &a.key_id).await.unwrap_err();
        assert!(matches!(e, KeyError::NotAdmin { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        s.authenticate(Some(&key)).await.unwrap();
        // It may still revoke ordinary keys of its organization, itself included.
        let other = s.create(&a, "other").await.unwrap();
        s.revoke(&m, &other.key.id).await.unwrap();
        s.revoke(&m, &m.key_id).await.unwrap();
    }

    async fn a_key_of_another_organization_is_neither_listed_nor_revocable_and_looks_absent(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (key, a) = admin(&s).await;
        let org = s.create_org(&a, "team b").await.unwrap();
        let b = s.authenticate(Some(&org.api_key.unwrap().value)).await.unwrap();
        let listed = s.list(&b).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed.iter().all(|k| k.organization_id == b.org_id));
        let e = s.revoke(&b, &a.key_id).await.unwrap_err();
        assert!(matches!(e, KeyError::NotFound { .. }), "{e}");
        assert_eq!(e.to_string(), KeyError::NotFound { id: a.key_id.clone() }.to_string());
        let ci = s.create(&a, "ci").await.unwrap();
        assert!(matches!(s.revoke(&b, &ci.key.id).await, Err(KeyError::NotFound { .. })));
        s.authenticate(Some(&key)).await.unwrap();
        s.authenticate(Some(&ci.value)).await.unwrap();
    }

    async fn only_admins_create_organizations_whose_keys_are_not_admin(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (_key, admin) = admin(&s).await;
        let org = s.create_org(&admin, "team b").await.unwrap();
        let b = s.authenticate(Some(&org.api_key.unwrap().value)).await.unwrap();
        assert_ne!(b.org_id, admin.org_id);
        assert!(!b.admin);
        assert!(matches!(s.create_org(&b, "sneaky").await, Err(KeyError::NotAdmin { .. })));
    }

    async fn a_revoked_key_stops_working_and_listing_never_shows_secrets(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (admin_key, admin) = admin(&s).await;
        let k = s.create(&admin, "ci").await.unwrap();
        s.authenticate(Some(&k.value)).await.unwrap();
        let listed = serde_json::to_string(&s.list(&admin).await.unwrap()).unwrap();
        assert!(!listed.contains(&k.value) && !listed.contains(&admin_key));
        s.revoke(&admin, &k.key.id).await.unwrap();
        assert!(matches!(s.authenticate(Some(&k.value)).await, Err(KeyError::Invalid)));
        assert!(matches!(s.revoke(&admin, &k.key.id).await, Err(KeyError::NotFound { .. })));
    }

    async fn a_key_stored_as_bare_sha256_still_authenticates_and_is_rehashed_on_first_use(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let (_key, a) = admin(&s).await;
        let id = insert_legacy(&s, &a.org_id, "cove_legacy-member-key", false).await;
        let p = s.authenticate(Some("cove_legacy-member-key")).await.unwrap();
        assert_eq!(p.key_id, id);
        assert!(!p.admin);
        let rec = s.store.get_api_key(&a.org_id, &id).await.unwrap().unwrap();
        assert_eq!(rec.hash_scheme, KeyHashScheme::HmacSha256);
        assert_eq!(rec.key_hash, s.hash("cove_legacy-member-key"));
        restarted(&s).authenticate(Some("cove_legacy-member-key")).await.unwrap();
    }

    async fn a_configured_bootstrap_key_stored_as_bare_sha256_is_rehashed_at_start(kind: Kind) {
        let (_d, s) = svc(kind).await;
        let org = Organization { id: "o".into(), name: "default".into(), created_at: 0 };
        s.store.insert_org(&org).await.unwrap();
        let id = insert_legacy(&s, "o", "weak", true).await;
        s.bootstrap(Some("weak")).await.expect("an old row of the bootstrap key never fails the start");
        let rec = s.store.get_api_key("o", &id).await.unwrap().unwrap();
        assert_eq!((rec.hash_scheme, rec.key_hash.as_str()), (KeyHashScheme::HmacSha256, s.hash("weak").as_str()));
        assert_eq!(s.store.count_admin_keys().await.unwrap(), 1);
        assert!(s.authenticate(Some("weak")).await.unwrap().admin);
    }

    #[test]
    fn privileged_sandboxes_need_the_server_option_and_an_admin_key() {
        let who = |admin| Principal { org_id: "o".into(), key_id: "k".into(), admin };
        who(true).may_create_privileged(true).unwrap();
        let cases = [
            (true, false, &["--allow-privileged"][..], &["admin"][..]),
            (false, true, &["admin API key"], &["--allow-privileged"]),
            (false, false, &["--allow-privileged", "admin API key"], &[]),
        ];
        for (admin, allowed, needles, absent) in cases {
            let e = who(admin).may_create_privileged(allowed).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
            let msg = e.to_string();
            assert!(msg.starts_with("privileged sandboxes need "), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{msg} should name {n}");
            }
            for n in absent {
                assert!(!msg.contains(n), "{msg} should not name {n}");
            }
        }
    }
}
