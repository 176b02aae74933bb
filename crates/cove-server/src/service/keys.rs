//! Organizations and API keys: authentication, the bootstrap admin key, key management.
//!
//! Keys are 160-bit random secrets shown once; only their sha256 is stored (a slow hash
//! buys nothing for keys this long).

use std::sync::Arc;

use cove_types::ErrorKind;
use cove_types::dto::{ApiKeyDto, CreatedApiKey, OrganizationDto};
use sha2::Digest as _;

use super::{iso, now_millis};
use crate::store::{ApiKeyRecord, Organization, Store, StoreError};

/// Who is calling: resolved from the bearer key on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The caller's organization: every object they touch is scoped to it.
    pub org_id: String,
    /// The key used.
    pub key_id: String,
    /// May create organizations.
    pub admin: bool,
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
            Self::NotAdmin { .. } => ErrorKind::PermissionDenied,
            Self::BadName { .. } => ErrorKind::InvalidArgument,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> KeyError {
    move |source| KeyError::Store { op, source }
}

/// Hashes a presented key for lookup.
pub fn hash_key(key: &str) -> String {
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

/// Authentication and key management.
#[derive(Debug, Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    /// Key id → when its use was last written.
    touched: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Key hash → (principal, when looked up).
    cache: Arc<std::sync::Mutex<std::collections::HashMap<String, (Principal, i64)>>>,
}

impl KeyService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        KeyService { store, touched: Arc::default(), cache: Arc::default() }
    }

    /// Ensures the bootstrap organization and admin key exist. With `configured` (from
    /// `COVE_API_KEY`) that key is registered if new; without it, a key is generated when
    /// there is none at all. Returns a generated key so the caller can show it once.
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
        let (key, generated) = match configured {
            Some(k) => {
                if self.store.api_key_by_hash(&hash_key(k)).await.map_err(store("look up bootstrap key"))?.is_some() {
                    return Ok(None);
                }
                (k.to_string(), false)
            }
            None => {
                if self.store.count_api_keys().await.map_err(store("count api keys"))? > 0 {
                    return Ok(None);
                }
                (new_key(), true)
            }
        };
        self.insert(&org.id, "bootstrap admin", &key, true).await?;
        Ok(generated.then_some(key))
    }

    async fn insert(&self, org_id: &str, name: &str, key: &str, admin: bool) -> Result<ApiKeyRecord, KeyError> {
        let rec = ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org_id.to_string(),
            name: name.to_string(),
            key_hash: hash_key(key),
            prefix: key.chars().take(10).collect(),
            admin,
            created_at: now_millis(),
            last_used_at: None,
        };
        self.store.insert_api_key(&rec).await.map_err(store("create api key"))?;
        Ok(rec)
    }

    /// Resolves a bearer token to its principal.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, KeyError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(KeyError::Missing)?;
        let hash = hash_key(token);
        let now = now_millis();
        if let Some((p, at)) = self.cache.lock().expect("auth cache is never poisoned").get(&hash)
            && now.saturating_sub(*at) < AUTH_CACHE_MS
        {
            return Ok(p.clone());
        }
        let rec = self.store.api_key_by_hash(&hash).await.map_err(store("authenticate"))?.ok_or(KeyError::Invalid)?;
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

    /// Creates a key in the caller's organization.
    pub async fn create(&self, who: &Principal, name: &str) -> Result<CreatedApiKey, KeyError> {
        if !valid_name(name) {
            return Err(KeyError::BadName { what: "api key" });
        }
        let key = new_key();
        let rec = self.insert(&who.org_id, name.trim(), &key, false).await?;
        Ok(CreatedApiKey { key: dto(&rec), value: key })
    }

    /// The caller's organization's keys, without secrets.
    pub async fn list(&self, who: &Principal) -> Result<Vec<ApiKeyDto>, KeyError> {
        Ok(self.store.list_api_keys(&who.org_id).await.map_err(store("list api keys"))?.iter().map(dto).collect())
    }

    /// Revokes one of the caller's organization's keys.
    pub async fn revoke(&self, who: &Principal, id: &str) -> Result<(), KeyError> {
        if self.store.revoke_api_key(&who.org_id, id, now_millis()).await.map_err(store("revoke api key"))? {
            self.cache.lock().expect("auth cache is never poisoned").retain(|_, (p, _)| p.key_id != id);
            Ok(())
        } else {
            Err(KeyError::NotFound { id: id.to_string() })
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
    use crate::store::SqliteStore;

    async fn svc() -> (tempfile::TempDir, KeyService) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("db")).await.unwrap();
        (d, KeyService::new(Arc::new(s)))
    }

    #[tokio::test]
    async fn a_generated_bootstrap_key_is_returned_once_and_then_authenticates_as_admin() {
        let (_d, s) = svc().await;
        let key = s.bootstrap(None).await.unwrap().expect("first start generates a key");
        assert!(s.bootstrap(None).await.unwrap().is_none(), "second start generates nothing");
        let p = s.authenticate(Some(&key)).await.unwrap();
        assert!(p.admin);
    }

    #[tokio::test]
    async fn a_configured_bootstrap_key_is_stored_hashed_and_works() {
        let (_d, s) = svc().await;
        assert!(s.bootstrap(Some("my-secret-key")).await.unwrap().is_none());
        s.authenticate(Some("my-secret-key")).await.unwrap();
        assert!(matches!(s.authenticate(Some("wrong")).await, Err(KeyError::Invalid)));
        assert!(matches!(s.authenticate(None).await, Err(KeyError::Missing)));
        let keys = s.store.list_api_keys(&s.store.first_org().await.unwrap().unwrap().id).await.unwrap();
        assert!(keys.iter().all(|k| k.key_hash != "my-secret-key" && k.key_hash.len() == 64));
    }

    #[tokio::test]
    async fn only_admins_create_organizations_whose_keys_are_not_admin() {
        let (_d, s) = svc().await;
        let admin_key = s.bootstrap(None).await.unwrap().unwrap();
        let admin = s.authenticate(Some(&admin_key)).await.unwrap();
        let org = s.create_org(&admin, "team b").await.unwrap();
        let b = s.authenticate(Some(&org.api_key.unwrap().value)).await.unwrap();
        assert_ne!(b.org_id, admin.org_id);
        assert!(!b.admin);
        assert!(matches!(s.create_org(&b, "sneaky").await, Err(KeyError::NotAdmin { .. })));
    }

    #[tokio::test]
    async fn a_revoked_key_stops_working_and_listing_never_shows_secrets() {
        let (_d, s) = svc().await;
        let admin_key = s.bootstrap(None).await.unwrap().unwrap();
        let admin = s.authenticate(Some(&admin_key)).await.unwrap();
        let k = s.create(&admin, "ci").await.unwrap();
        s.authenticate(Some(&k.value)).await.unwrap();
        let listed = serde_json::to_string(&s.list(&admin).await.unwrap()).unwrap();
        assert!(!listed.contains(&k.value) && !listed.contains(&admin_key));
        s.revoke(&admin, &k.key.id).await.unwrap();
        assert!(matches!(s.authenticate(Some(&k.value)).await, Err(KeyError::Invalid)));
        assert!(matches!(s.revoke(&admin, &k.key.id).await, Err(KeyError::NotFound { .. })));
    }
}
