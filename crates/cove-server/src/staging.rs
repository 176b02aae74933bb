//! The staging ledger: bytes that unfinished uploads hold on the data disk, per organization,
//! shared by the built-in registry's blob uploads and the object storage's multipart uploads.
//!
//! Contract: an upload charges every byte it keeps to its organization *before* keeping it
//! ([`Charge::add`]); a charge that would take the organization past
//! [`UploadLimits::org_bytes`] (`--upload-staging-limit-mib`) is refused with [`OverLimit`],
//! whose message names the flag. A [`Charge`] gives its bytes back when dropped, so an upload
//! that ends in any way (completed, cancelled, swept as idle, its request dropped) frees its
//! share without bookkeeping at each exit. One [`Staging`] is made at start and handed to both
//! services (clones share the ledger), so an organization's registry pushes and multipart
//! uploads count against one limit. The ledger lives in memory: a service that keeps uploads
//! across restarts (object storage) charges what it finds on disk at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an upload may sit without a request before it is dropped, by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Bytes an organization's unfinished uploads may hold, by default (10 GiB).
pub const DEFAULT_ORG_BYTES: u64 = 10 << 30;

/// What unfinished uploads may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// An upload with no request for this long is removed.
    pub idle: Duration,
    /// Bytes one organization's unfinished uploads may stage together.
    pub org_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits { idle: DEFAULT_IDLE, org_bytes: DEFAULT_ORG_BYTES }
    }
}

/// A charge refused: the organization's unfinished uploads would hold more than they may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "organization {org} has {staged} bytes in unfinished uploads; the limit is {limit} bytes \
     (--upload-staging-limit-mib): finish or cancel uploads first"
)]
pub struct OverLimit {
    /// The organization.
    pub org: String,
    /// Bytes it has staged now.
    pub staged: u64,
    /// Its limit.
    pub limit: u64,
}

/// The shared ledger of staged bytes per organization, and the limits uploads obey.
#[derive(Debug, Clone)]
pub struct Staging {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: UploadLimits,
    staged: Mutex<HashMap<String, u64>>,
}

impl Default for Staging {
    fn default() -> Self {
        Staging::new(UploadLimits::default())
    }
}

impl Staging {
    /// An empty ledger under `limits`.
    pub fn new(limits: UploadLimits) -> Self {
        Staging { inner: Arc::new(Inner { limits, staged: Mutex::default() }) }
    }

    /// The limits uploads obey.
    pub fn limits(&self) -> UploadLimits {
        self.inner.limits
    }

    /// Bytes the unfinished uploads of `org` hold.
    pub fn staged(&self, org: &str) -> u64 {
        self.map().get(org).copied().unwrap_or(0)
    }

    /// An empty charge for `org`, refused while the organization is already at its limit
    /// (a new upload would get nowhere).
    pub fn admit(&self, org: &str) -> Result<Charge, OverLimit> {
        let staged = self.staged(org);
        if staged >= self.inner.limits.org_bytes {
            return Err(self.over(org, staged));
        }
        Ok(self.charge(org))
    }

    /// An empty charge for `org`.
    pub fn charge(&self, org: &str) -> Charge {
        Charge { staging: self.clone(), org: org.to_string(), bytes: 0 }
    }

    fn over(&self, org: &str, staged: u64) -> OverLimit {
        OverLimit { org: org.to_string(), staged, limit: self.inner.limits.org_bytes }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner.staged.lock().expect("staging ledger is never poisoned")
    }
}

/// Bytes one upload (or one request of it) charged to its organization, given back on drop.
#[derive(Debug)]
pub struct Charge {
    staging: Staging,
    org: String,
    bytes: u64,
}

impl Charge {
    /// The organization charged.
    pub fn org(&self) -> &str {
        &self.org
    }

    /// Bytes this charge holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges `n` more bytes, unless that would pass the organization's limit.
    pub fn add(&mut self, n: u64) -> Result<(), OverLimit> {
        let limit = self.staging.inner.limits.org_bytes;
        let mut map = self.staging.map();
        let total = map.entry(self.org.clone()).or_insert(0);
        if total.saturating_add(n) > limit {
            let staged = *total;
            if staged == 0 {
                map.remove(&self.org);
            }
            drop(map);
            return Err(self.staging.over(&self.org, staged));
        }
        *total += n;
        self.bytes += n;
        Ok(())
    }

    /// Whether `n` more bytes would fit now (nothing is charged: a quick refusal before a
    /// body is read; [`Charge::add`] decides as the bytes arrive).
    pub fn check(&self, n: u64) -> Result<(), OverLimit> {
        let staged = self.staging.staged(&self.org);
        if staged.saturating_add(n) > self.staging.inner.limits.org_bytes {
            return Err(self.staging.over(&self.org, staged));
        }
        Ok(())
    }

    /// Charges `n` bytes whatever the limit: bytes already on disk (found at start) are
    /// counted even where they pass it, so new ones are refused until they go.
    pub fn force(&mut self, n: u64) {
        *self.staging.map().entry(self.org.clone()).or_insert(0) += n;
        self.bytes += n;
    }

    /// Gives back up to `n` bytes (what a replaced part held).
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        give_back(&self.staging, &self.org, n);
    }

    /// Takes over what `other` holds (both stay charged to the same organization).
    pub fn absorb(&mut self, mut other: Charge) {
        if other.org == self.org && Arc::ptr_eq(&other.staging.inner, &self.staging.inner) {
            self.bytes += std::mem::take(&mut other.bytes);
        } else {
            // Another ledger or organization: keep each where it was charged.
            let n = std::mem::take(&mut other.bytes);
            give_back(&other.staging, &other.org, n);
            self.force(n);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        give_back(&self.staging, &self.org, self.bytes);
    }
}

fn give_back(staging: &Staging, org: &str, n: u64) {
    if n == 0 {
        return;
    }
    let mut map = staging.map();
    if let Some(total) = map.get_mut(org) {
        *total = total.saturating_sub(n);
        if *total == 0 {
            map.remove(org);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging(limit: u64) -> Staging {
        Staging::new(UploadLimits { org_bytes: limit, ..UploadLimits::default() })
    }

    #[test]
    fn charges_of_one_organization_share_its_limit_and_are_given_back_when_dropped() {
        let s = staging(10);
        let mut a = s.admit("o").unwrap();
        a.add(6).unwrap();
        let mut b = s.clone().admit("o").unwrap();
        let e = b.add(5).unwrap_err();
        assert_eq!(e, OverLimit { org: "o".into(), staged: 6, limit: 10 });
        assert!(e.to_string().contains("--upload-staging-limit-mib"), "{e}");
        b.add(4).unwrap();
        assert!(s.admit("o").is_err(), "an organization at its limit is refused a new upload");
        assert!(s.admit("p").is_ok(), "another organization has its own limit");
        drop(a);
        assert_eq!(s.staged("o"), 4);
        drop(b);
        assert_eq!(s.staged("o"), 0);
    }

    #[test]
    fn forced_bytes_count_past_the_limit_and_released_or_absorbed_bytes_are_not_counted_twice() {
        let s = staging(10);
        let mut upload = s.charge("o");
        upload.force(12);
        assert_eq!(s.staged("o"), 12);
        assert!(upload.check(1).is_err());
        upload.release(5);
        assert_eq!((s.staged("o"), upload.bytes()), (7, 7));
        let mut part = s.charge("o");
        part.add(3).unwrap();
        upload.absorb(part);
        assert_eq!((s.staged("o"), upload.bytes()), (10, 10));
        drop(upload);
        assert_eq!(s.staged("o"), 0);
    }
}
