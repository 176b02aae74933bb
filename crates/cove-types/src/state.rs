//! The snapshot lifecycle.

use std::fmt;
use std::str::FromStr;

/// A snapshot's state, spelled on the wire as Daytona spells it.
///
/// ```text
/// pending ─► pulling ─► active ◄─► inactive
///    │          │          │
///    └► building┴► error / build_failed
/// any ─► removing ─► (gone)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Recorded, waiting for its job.
    Pending,
    /// A Dockerfile build is running.
    Building,
    /// The image is being pulled and unpacked.
    Pulling,
    /// Ready for sandboxes.
    Active,
    /// Deactivated, by hand or after two weeks unused.
    Inactive,
    /// The pull failed; `errorReason` says why.
    Error,
    /// The build failed; `errorReason` says why.
    BuildFailed,
    /// Being deleted.
    Removing,
}

impl SnapshotState {
    /// Every state, in lifecycle order.
    pub const ALL: [SnapshotState; 8] = [
        Self::Pending,
        Self::Building,
        Self::Pulling,
        Self::Active,
        Self::Inactive,
        Self::Error,
        Self::BuildFailed,
        Self::Removing,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Pulling => "pulling",
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Error => "error",
            Self::BuildFailed => "build_failed",
            Self::Removing => "removing",
        }
    }

    /// A job is working on the snapshot (it must be resumed after a crash).
    pub fn is_in_progress(self) -> bool {
        matches!(self, Self::Pending | Self::Building | Self::Pulling)
    }

    /// Activation is allowed from `inactive` and, as a harmless no-op, from `active`.
    pub fn can_activate(self) -> bool {
        matches!(self, Self::Active | Self::Inactive)
    }

    /// Only an active snapshot can be deactivated (deactivating an inactive one is a no-op).
    pub fn can_deactivate(self) -> bool {
        matches!(self, Self::Active | Self::Inactive)
    }

    /// Any snapshot may be deleted, except one already being removed.
    pub fn can_delete(self) -> bool {
        self != Self::Removing
    }

    /// The pull (or build) job may move a snapshot from `pending` to `pulling` (`building`);
    /// a job interrupted by a restart starts over from either.
    pub fn can_start_pull(self) -> bool {
        matches!(self, Self::Pending | Self::Pulling | Self::Building)
    }

    /// The pull job may finish (to `active` or `error`) only while it is still pulling.
    pub fn can_finish_pull(self) -> bool {
        self == Self::Pulling
    }

    /// New sandboxes may start from it.
    pub fn can_use(self) -> bool {
        self == Self::Active
    }
}

impl fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state string.
#[derive(Debug, thiserror::Error)]
#[error("unknown snapshot state {0:?}")]
pub struct ParseStateError(pub String);

impl FromStr for SnapshotState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| ParseStateError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_wire_spelling() {
        for s in SnapshotState::ALL {
            assert_eq!(s.as_str().parse::<SnapshotState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(SnapshotState::BuildFailed.as_str(), "build_failed");
    }

    #[test]
    fn only_active_and_inactive_snapshots_can_be_activated() {
        let ok: Vec<_> = SnapshotState::ALL.into_iter().filter(|s| s.can_activate()).collect();
        assert_eq!(ok, [SnapshotState::Active, SnapshotState::Inactive]);
    }

    #[test]
    fn a_pull_finishes_only_from_pulling_so_a_deleted_snapshot_is_not_revived() {
        assert!(SnapshotState::Pulling.can_finish_pull());
        assert!(!SnapshotState::Removing.can_finish_pull());
        assert!(!SnapshotState::Removing.can_start_pull());
        assert!(!SnapshotState::Removing.can_delete());
    }

    #[test]
    fn jobs_in_progress_are_the_ones_resumed_after_a_crash() {
        let v: Vec<_> = SnapshotState::ALL.into_iter().filter(|s| s.is_in_progress()).collect();
        assert_eq!(v, [SnapshotState::Pending, SnapshotState::Building, SnapshotState::Pulling]);
    }
}
