//! The store's behaviour, on both engines (`<test>::on_sqlite`, `<test>::on_postgres`).

use std::collections::BTreeMap;
use std::sync::Arc;

use cove_types::{SandboxState, SnapshotState};

use super::testing::{Kind, each_store};
use super::*;

each_store!(
    snapshot_names_are_unique_per_organization_only,
    one_organization_cannot_read_anothers_snapshot_by_id_or_name,
    every_organization_sees_general_snapshots_and_its_own_name_wins_over_theirs,
    pages_are_stable_and_counted,
    names_sort_by_bytes_as_sqlite_compares_them_whatever_the_database_locale,
    the_name_filter_ignores_ascii_case,
    a_conditional_update_does_nothing_when_the_state_moved_on,
    snapshots_unused_for_the_period_become_inactive,
    revoked_keys_no_longer_authenticate,
    the_last_live_admin_key_is_never_revoked,
    two_revokes_of_the_last_two_admin_keys_at_once_leave_one,
    a_duplicate_key_hash_is_a_duplicate_error,
    sandboxes_round_trip_every_field_and_their_names_are_unique_per_organization,
    a_sandbox_is_found_by_id_before_another_sandbox_of_that_name,
    a_sandbox_compare_and_set_does_nothing_when_the_state_moved_on,
    registries_are_listed_newest_first_even_within_one_millisecond,
    quotas_are_replaced_and_usage_counts_every_sandbox_not_destroyed,
    preview_tokens_expire_and_go_with_their_sandbox,
    activity_never_moves_back_and_skips_deleted_sandboxes,
    an_archive_is_recorded_only_while_the_sandbox_is_in_the_expected_state,
    every_image_a_snapshot_sandbox_or_archive_names_is_referenced,
    writes_are_reported_to_change_subscribers,
    a_node_registers_heartbeats_and_keeps_its_drain_across_a_restart,
    the_first_installation_secret_stored_is_the_one_every_node_reads,
    a_node_is_marked_lost_only_once_and_only_when_its_heartbeat_is_old,
    a_lost_node_that_heartbeats_again_is_ready,
    a_sandbox_is_failed_only_while_its_row_is_as_it_was_read,
    sandboxes_are_listed_and_counted_per_node_and_old_rows_can_be_claimed_once,
);

pub(super) fn node(id: &str, heartbeat_at: Millis) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        region: "us".into(),
        address: format!("http://{id}:3000"),
        cpus: 8,
        memory_mib: 16384,
        disk_mib: 100_000,
        gpus: 0,
        state: NodeState::Ready,
        started_at: heartbeat_at,
        heartbeat_at,
        version: "0.1.0".into(),
    }
}

async fn the_first_installation_secret_stored_is_the_one_every_node_reads(kind: Kind) {
    let (_d, s) = store(kind).await;
    assert_eq!(s.installation_secret("node-token", "first").await.unwrap(), "first");
    assert_eq!(s.installation_secret("node-token", "second").await.unwrap(), "first");
    assert_eq!(s.installation_secret("other", "its own").await.unwrap(), "its own");
}

async fn a_node_registers_heartbeats_and_keeps_its_drain_across_a_restart(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.register_node(&node("a", 1000)).await.unwrap();
    assert_eq!(s.get_node("a").await.unwrap(), Some(node("a", 1000)));
    assert_eq!(s.heartbeat_node("a", 2000).await.unwrap(), Heartbeat::Beat);
    assert_eq!(s.get_node("a").await.unwrap().unwrap().heartbeat_at, 2000);
    assert_eq!(s.heartbeat_node("nobody", 2000).await.unwrap(), Heartbeat::Missing);
    assert!(s.set_node_state_if("a", NodeState::Draining, &[NodeState::Ready]).await.unwrap());
    assert!(!s.set_node_state_if("a", NodeState::Draining, &[NodeState::Ready]).await.unwrap(), "compare-and-set");
    let restarted = NodeRecord { address: "http://a2:3000".into(), cpus: 16, ..node("a", 3000) };
    s.register_node(&restarted).await.unwrap();
    let got = s.get_node("a").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.address.as_str(), got.cpus, got.heartbeat_at),
        (NodeState::Draining, "http://a2:3000", 16, 3000)
    );
    s.register_node(&node("b", 3000)).await.unwrap();
    let ids: Vec<_> = s.list_nodes().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["a", "b"]);
}

async fn a_node_is_marked_lost_only_once_and_only_when_its_heartbeat_is_old(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.register_node(&node("a", 1000)).await.unwrap();
    assert!(!s.mark_node_lost_if("a", 1000).await.unwrap(), "a heartbeat at the limit is not old");
    let sweeps = (0..8).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.mark_node_lost_if("a", 1001).await.unwrap() })
    });
    let won = futures_util::future::join_all(sweeps).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1, "exactly one sweeper marks the node lost");
    assert_eq!(s.get_node("a").await.unwrap().unwrap().state, NodeState::Lost);
}

async fn a_lost_node_that_heartbeats_again_is_ready(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.register_node(&node("a", 1000)).await.unwrap();
    assert!(s.mark_node_lost_if("a", 5000).await.unwrap());
    assert_eq!(s.heartbeat_node("a", 6000).await.unwrap(), Heartbeat::Revived);
    assert_eq!(s.heartbeat_node("a", 7000).await.unwrap(), Heartbeat::Beat);
    let got = s.get_node("a").await.unwrap().unwrap();
    assert_eq!((got.state, got.heartbeat_at), (NodeState::Ready, 7000));
    assert!(s.mark_node_lost_if("a", 9000).await.unwrap());
    s.register_node(&node("a", 9500)).await.unwrap();
    assert_eq!(s.get_node("a").await.unwrap().unwrap().state, NodeState::Ready, "a restart registers it ready");
}

async fn a_sandbox_is_failed_only_while_its_row_is_as_it_was_read(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut rec = sandbox("x", "o1", SandboxState::Started);
    rec.node_id = Some("a".into());
    s.insert_sandbox(&rec).await.unwrap();
    let mut changes = s.changes();
    // The node wrote meanwhile (same state, a later updated_at): the stale read loses.
    let mut newer = rec.clone();
    newer.labels.insert("k".into(), "v".into());
    newer.updated_at += 1;
    assert!(s.update_sandbox_if(&newer, &[SandboxState::Started]).await.unwrap());
    let _ = changes.recv().await.unwrap();
    assert_eq!(s.fail_sandbox_if_unchanged(&rec, "node lost", 99).await.unwrap(), None);
    let failed = s.fail_sandbox_if_unchanged(&newer, "node lost", 99).await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.error_reason.as_deref(), failed.updated_at),
        (SandboxState::Error, Some("node lost"), 99)
    );
    let stored = s.get_sandbox("o1", "x").await.unwrap().unwrap();
    assert_eq!(stored, failed, "only state, reason and time changed; the labels stay");
    assert!(matches!(changes.recv().await.unwrap(), Change::Sandbox { previous: Some(SandboxState::Started), .. }));
}

async fn sandboxes_are_listed_and_counted_per_node_and_old_rows_can_be_claimed_once(kind: Kind) {
    let (_d, s) = store(kind).await;
    for (id, node, state) in [
        ("a1", Some("a"), SandboxState::Started),
        ("a2", Some("a"), SandboxState::Destroyed),
        ("b1", Some("b"), SandboxState::Stopped),
        ("old", None, SandboxState::Started),
    ] {
        s.insert_sandbox(&SandboxRecord { node_id: node.map(Into::into), ..sandbox(id, "o1", state) }).await.unwrap();
    }
    let on = |n: Option<&'static str>| {
        let s = s.clone();
        async move { s.node_sandboxes_for_job(n).await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>() }
    };
    assert_eq!(on(Some("a")).await, ["a1", "a2"]);
    assert_eq!(on(None).await.len(), 4, "no node: every row");
    let mut counts = s.sandbox_counts_by_node().await.unwrap();
    counts.sort();
    assert_eq!(counts, [(None, 1), (Some("a".into()), 1), (Some("b".into()), 1)]);
    assert!(s.claim_sandbox("old", "b").await.unwrap());
    assert!(!s.claim_sandbox("old", "a").await.unwrap(), "claimed once");
    assert!(!s.claim_sandbox("a1", "b").await.unwrap(), "a node's sandbox is never claimed");
    assert_eq!(on(Some("b")).await, ["b1", "old"]);
}

pub(super) fn snap(id: &str, org: &str, name: &str, created: Millis) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        org_id: org.into(),
        name: name.into(),
        image_name: "busybox:1.36".into(),
        state: SnapshotState::Pending,
        error_reason: None,
        cpu: 1,
        gpu: 0,
        gpu_type: None,
        mem: 1,
        disk: 3,
        entrypoint: None,
        region_id: "us".into(),
        size_bytes: None,
        image_digest: None,
        created_at: created,
        updated_at: created,
        last_used_at: None,
        build: None,
        general: false,
    }
}

pub(crate) use super::testing::sandbox;

pub(super) fn key(id: &str, org: &str, hash: &str, admin: bool) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        org_id: org.into(),
        name: "ci".into(),
        key_hash: hash.into(),
        hash_scheme: KeyHashScheme::HmacSha256,
        prefix: "cove_ab".into(),
        admin,
        created_at: 1,
        last_used_at: None,
        revoked_at: None,
    }
}

/// A fresh store with the organizations `o1` and `o2`.
async fn store(kind: Kind) -> (tempfile::TempDir, Arc<dyn Store>) {
    let d = tempfile::tempdir().unwrap();
    let s = testing::open(kind, d.path()).await;
    for org in ["o1", "o2"] {
        s.insert_org(&Organization { id: org.into(), name: org.into(), created_at: 0 }).await.unwrap();
    }
    (d, s)
}

fn all() -> SnapshotQuery {
    SnapshotQuery { name: None, sort: SnapshotSort::CreatedAt, ascending: true, offset: 0, limit: 100 }
}

async fn snapshot_names_are_unique_per_organization_only(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_snapshot(&snap("a", "o1", "same", 1)).await.unwrap();
    let e = s.insert_snapshot(&snap("b", "o1", "same", 2)).await.unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "snapshot" }), "{e:?}");
    s.insert_snapshot(&snap("c", "o2", "same", 3)).await.unwrap();
}

async fn one_organization_cannot_read_anothers_snapshot_by_id_or_name(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_snapshot(&snap("a", "o1", "mine", 1)).await.unwrap();
    assert!(s.get_snapshot("o2", "a").await.unwrap().is_none());
    assert!(s.get_snapshot("o2", "mine").await.unwrap().is_none());
    assert_eq!(s.get_snapshot("o1", "mine").await.unwrap().unwrap().id, "a");
    assert_eq!(s.list_snapshots("o2", &all()).await.unwrap().1, 0);
}

async fn every_organization_sees_general_snapshots_and_its_own_name_wins_over_theirs(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut general = snap("g", "o1", "cove-small", 1);
    general.general = true;
    general.state = SnapshotState::Active;
    s.insert_snapshot(&general).await.unwrap();
    assert_eq!(s.get_snapshot("o2", "cove-small").await.unwrap().unwrap().id, "g");
    assert_eq!(s.get_snapshot("o2", "g").await.unwrap().unwrap().id, "g");
    assert!(s.get_snapshot("o2", "g").await.unwrap().unwrap().general);
    assert_eq!(s.list_snapshots("o2", &all()).await.unwrap().1, 1);
    assert_eq!(s.general_snapshot_named("cove-small").await.unwrap().unwrap().id, "g");
    s.insert_snapshot(&snap("own", "o2", "cove-small", 2)).await.unwrap();
    assert_eq!(s.get_snapshot("o2", "cove-small").await.unwrap().unwrap().id, "own");
    assert_eq!(s.get_snapshot("o2", "g").await.unwrap().unwrap().id, "g", "an id still names the general one");
    assert!(s.general_snapshot_named("own").await.unwrap().is_none());
    assert_eq!(s.deactivate_unused(i64::MAX, 5).await.unwrap(), 0, "a general snapshot never becomes inactive");
}

async fn pages_are_stable_and_counted(kind: Kind) {
    let (_d, s) = store(kind).await;
    for i in 0..25 {
        s.insert_snapshot(&snap(&format!("id{i:02}"), "o1", &format!("snap-{i:02}"), i)).await.unwrap();
    }
    let q = SnapshotQuery { offset: 10, limit: 10, ..all() };
    let (items, total) = s.list_snapshots("o1", &q).await.unwrap();
    assert_eq!(total, 25);
    let names: Vec<_> = items.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"snap-10"));
    assert_eq!(names.len(), 10);
    let q = SnapshotQuery { name: Some("-2".into()), ..all() };
    assert_eq!(s.list_snapshots("o1", &q).await.unwrap().1, 5);
    let q = SnapshotQuery { name: Some("%".into()), ..all() };
    assert_eq!(s.list_snapshots("o1", &q).await.unwrap().1, 0, "LIKE wildcards in the filter are literal");
    let q = SnapshotQuery { name: Some("p_0".into()), ..all() };
    assert_eq!(s.list_snapshots("o1", &q).await.unwrap().1, 0, "so is _");
}

async fn names_sort_by_bytes_as_sqlite_compares_them_whatever_the_database_locale(kind: Kind) {
    let (_d, s) = store(kind).await;
    for (i, name) in ["b", "B", "a-1", "A_1", "a.1", "_z", "Z"].iter().enumerate() {
        s.insert_snapshot(&snap(&format!("id{i}"), "o1", name, 1)).await.unwrap();
    }
    let q = SnapshotQuery { sort: SnapshotSort::Name, ..all() };
    let names: Vec<_> = s.list_snapshots("o1", &q).await.unwrap().0.into_iter().map(|x| x.name).collect();
    assert_eq!(names, ["A_1", "B", "Z", "_z", "a-1", "a.1", "b"]);
}

async fn the_name_filter_ignores_ascii_case(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_snapshot(&snap("a", "o1", "Python-3.12", 1)).await.unwrap();
    s.insert_snapshot(&snap("b", "o1", "node", 2)).await.unwrap();
    for filter in ["python", "PYTHON", "n-3"] {
        let q = SnapshotQuery { name: Some(filter.into()), ..all() };
        let (items, total) = s.list_snapshots("o1", &q).await.unwrap();
        assert_eq!((items.len(), total), (1, 1), "{filter}");
        assert_eq!(items[0].id, "a");
    }
}

async fn a_conditional_update_does_nothing_when_the_state_moved_on(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut r = snap("a", "o1", "x", 1);
    s.insert_snapshot(&r).await.unwrap();
    r.state = SnapshotState::Pulling;
    assert!(s.update_snapshot_if(&r, &[SnapshotState::Pending]).await.unwrap());
    r.state = SnapshotState::Active;
    assert!(!s.update_snapshot_if(&r, &[SnapshotState::Pending]).await.unwrap());
    assert_eq!(s.get_snapshot("o1", "a").await.unwrap().unwrap().state, SnapshotState::Pulling);
    r.entrypoint = Some(vec!["sleep".into(), "infinity".into()]);
    r.build = Some(BuildSpec { dockerfile: "FROM x".into(), context_hashes: vec!["h1".into(), "h2".into()] });
    r.image_digest = Some("sha256:ab".into());
    r.size_bytes = Some(1 << 40);
    assert!(s.update_snapshot_if(&r, &[SnapshotState::Pending, SnapshotState::Pulling]).await.unwrap());
    assert_eq!(s.get_snapshot_for_job("a").await.unwrap().unwrap(), r, "every column round-trips");
    let pulling = s.snapshots_in_states_for_job(&[SnapshotState::Pulling, SnapshotState::Active]).await.unwrap();
    assert_eq!(pulling.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ["a"]);
    s.delete_snapshot("a").await.unwrap();
    assert!(s.get_snapshot_for_job("a").await.unwrap().is_none());
}

async fn snapshots_unused_for_the_period_become_inactive(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut old = snap("a", "o1", "old", 10);
    old.state = SnapshotState::Active;
    let mut used = snap("b", "o1", "used", 10);
    used.state = SnapshotState::Active;
    s.insert_snapshot(&old).await.unwrap();
    s.insert_snapshot(&used).await.unwrap();
    s.touch_snapshot("b", 1_000).await.unwrap();
    assert_eq!(s.deactivate_unused(500, 2_000).await.unwrap(), 1);
    let old = s.get_snapshot("o1", "old").await.unwrap().unwrap();
    assert_eq!((old.state, old.updated_at), (SnapshotState::Inactive, 2_000));
    assert_eq!(s.get_snapshot("o1", "used").await.unwrap().unwrap().state, SnapshotState::Active);
}

async fn revoked_keys_no_longer_authenticate(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_api_key(&key("k", "o1", "h", false)).await.unwrap();
    let hmac = KeyHashScheme::HmacSha256;
    assert!(s.api_key_by_hash(hmac, "h").await.unwrap().is_some());
    assert!(s.api_key_by_hash(KeyHashScheme::Sha256, "h").await.unwrap().is_none(), "the scheme must match");
    s.touch_api_key("k", 7).await.unwrap();
    assert_eq!(s.list_api_keys("o1").await.unwrap()[0].last_used_at, Some(7));
    assert_eq!(s.revoke_api_key("o2", "k", 2).await.unwrap(), Revoked::NotFound, "another organization cannot");
    assert_eq!(s.revoke_api_key("o1", "k", 2).await.unwrap(), Revoked::Done);
    assert!(s.api_key_by_hash(hmac, "h").await.unwrap().is_none());
    assert!(s.get_api_key("o1", "k").await.unwrap().is_none());
    assert!(s.list_api_keys("o1").await.unwrap().is_empty());
    assert_eq!(s.api_key_by_hash_including_revoked(hmac, "h").await.unwrap().unwrap().revoked_at, Some(2));
}

async fn the_last_live_admin_key_is_never_revoked(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_api_key(&key("a1", "o1", "h1", true)).await.unwrap();
    s.insert_api_key(&key("a2", "o1", "h2", true)).await.unwrap();
    assert_eq!(s.count_admin_keys().await.unwrap(), 2);
    assert_eq!(s.revoke_api_key("o1", "a1", 2).await.unwrap(), Revoked::Done);
    assert_eq!(s.revoke_api_key("o1", "a2", 3).await.unwrap(), Revoked::LastAdmin);
    assert!(s.api_key_by_hash(KeyHashScheme::HmacSha256, "h2").await.unwrap().is_some());
    s.restore_admin_key("a1").await.unwrap();
    assert_eq!(s.count_admin_keys().await.unwrap(), 2);
}

async fn two_revokes_of_the_last_two_admin_keys_at_once_leave_one(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_api_key(&key("a1", "o1", "h1", true)).await.unwrap();
    s.insert_api_key(&key("a2", "o2", "h2", true)).await.unwrap();
    for round in 0..20 {
        let (r1, r2) = tokio::join!(s.revoke_api_key("o1", "a1", round), s.revoke_api_key("o2", "a2", round));
        let mut got = [r1.unwrap(), r2.unwrap()];
        got.sort_by_key(|r| *r == Revoked::Done);
        assert_eq!(got, [Revoked::LastAdmin, Revoked::Done], "round {round}");
        assert_eq!(s.count_admin_keys().await.unwrap(), 1, "round {round}");
        s.restore_admin_key("a1").await.unwrap();
        s.restore_admin_key("a2").await.unwrap();
    }
}

async fn a_duplicate_key_hash_is_a_duplicate_error(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_api_key(&key("k1", "o1", "h", false)).await.unwrap();
    let e = s.insert_api_key(&key("k2", "o2", "h", false)).await.unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "api key" }), "{e:?}");
    assert_eq!(e.kind(), cove_types::ErrorKind::AlreadyExists);
}

async fn sandboxes_round_trip_every_field_and_their_names_are_unique_per_organization(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut r = sandbox("x", "o1", SandboxState::Started);
    r.env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two words".into())]);
    r.labels = BTreeMap::from([("team".into(), "ml".into())]);
    r.public = true;
    r.network_block_all = true;
    r.privileged = true;
    r.build = Some(BuildSpec { dockerfile: "FROM y".into(), context_hashes: vec![] });
    r.network_allow_list = Some("10.0.0.0/8".into());
    r.domain_allow_list = Some("*.example.org".into());
    r.linked_sandbox_id = Some("peer".into());
    r.daemon_version = Some("0.1.0".into());
    s.insert_sandbox(&r).await.unwrap();
    assert_eq!(s.get_sandbox("o1", "x").await.unwrap().unwrap(), r);
    assert_eq!(s.get_sandbox_by_id("x").await.unwrap().unwrap(), r);
    assert!(s.get_sandbox("o2", "x").await.unwrap().is_none());
    let mut twin = sandbox("y", "o1", SandboxState::Started);
    twin.name = "x".into();
    let e = s.insert_sandbox(&twin).await.unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "sandbox" }), "{e:?}");
    twin.org_id = "o2".into();
    s.insert_sandbox(&twin).await.unwrap();
    let mut newer = sandbox("z", "o1", SandboxState::Creating);
    newer.created_at = 5;
    s.insert_sandbox(&newer).await.unwrap();
    let listed: Vec<_> = s.list_sandboxes("o1").await.unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(listed, ["z", "x"], "newest first");
    let every: Vec<_> = s.all_sandboxes_for_job().await.unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(every.len(), 3);
    s.delete_sandbox("x").await.unwrap();
    assert!(s.get_sandbox_by_id("x").await.unwrap().is_none());
}

async fn a_sandbox_is_found_by_id_before_another_sandbox_of_that_name(kind: Kind) {
    let (_d, s) = store(kind).await;
    let first = sandbox("aaa", "o1", SandboxState::Started);
    let mut named = sandbox("bbb", "o1", SandboxState::Started);
    named.name = "aaa".into();
    let mut other = first.clone();
    other.name = "zzz".into();
    s.insert_sandbox(&named).await.unwrap();
    s.insert_sandbox(&other).await.unwrap();
    assert_eq!(s.get_sandbox("o1", "aaa").await.unwrap().unwrap().id, "aaa");
    assert_eq!(s.get_sandbox("o1", "bbb").await.unwrap().unwrap().id, "bbb");
}

async fn a_sandbox_compare_and_set_does_nothing_when_the_state_moved_on(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut r = sandbox("x", "o1", SandboxState::Creating);
    s.insert_sandbox(&r).await.unwrap();
    r.state = SandboxState::Started;
    r.daemon_version = Some("v".into());
    assert!(s.update_sandbox_if(&r, &[SandboxState::Creating, SandboxState::Stopped]).await.unwrap());
    r.state = SandboxState::Stopped;
    assert!(!s.update_sandbox_if(&r, &[SandboxState::Creating]).await.unwrap());
    let got = s.get_sandbox("o1", "x").await.unwrap().unwrap();
    assert_eq!((got.state, got.daemon_version.as_deref()), (SandboxState::Started, Some("v")));
}

fn registry(id: &str, created: Millis) -> RegistryRecord {
    RegistryRecord {
        id: id.into(),
        org_id: "o1".into(),
        name: format!("reg-{id}"),
        url: "registry.example".into(),
        username: "u".into(),
        sealed_secret: Some("v1:sealed".into()),
        project: String::new(),
        provider: "generic".into(),
        role_arn: None,
        created_at: created,
        updated_at: created,
    }
}

async fn registries_are_listed_newest_first_even_within_one_millisecond(kind: Kind) {
    let (_d, s) = store(kind).await;
    // Ids in the reverse of insertion order, so that no id order can pass for it.
    for id in ["r9", "r5", "r1"] {
        s.insert_registry(&registry(id, 7)).await.unwrap();
    }
    s.insert_registry(&registry("r0", 6)).await.unwrap();
    let ids: Vec<_> = s.list_registries("o1").await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["r1", "r5", "r9", "r0"]);
    let mut changed = registry("r5", 7);
    changed.username = "v".into();
    changed.sealed_secret = None;
    changed.role_arn = Some("arn:aws:iam::1:role/x".into());
    assert!(s.update_registry(&changed).await.unwrap());
    assert_eq!(s.get_registry("o1", "r5").await.unwrap().unwrap(), changed);
    assert!(s.get_registry("o2", "r5").await.unwrap().is_none());
    assert!(!s.update_registry(&RegistryRecord { org_id: "o2".into(), ..changed }).await.unwrap());
    assert!(!s.delete_registry("o2", "r5").await.unwrap());
    assert!(s.delete_registry("o1", "r5").await.unwrap());
    assert!(!s.delete_registry("o1", "r5").await.unwrap());
}

async fn quotas_are_replaced_and_usage_counts_every_sandbox_not_destroyed(kind: Kind) {
    let (_d, s) = store(kind).await;
    assert!(s.get_org_quota("o1").await.unwrap().is_none());
    let q =
        QuotaRecord { org_id: "o1".into(), sandboxes: Some(3), cpu: None, memory: Some(8), disk: None, updated_at: 1 };
    s.set_org_quota(&q).await.unwrap();
    let q2 = QuotaRecord { cpu: Some(4), memory: None, updated_at: 2, ..q.clone() };
    s.set_org_quota(&q2).await.unwrap();
    assert_eq!(s.get_org_quota("o1").await.unwrap().unwrap(), q2);
    assert_eq!(s.sandbox_usage("o1").await.unwrap(), SandboxUsage::default());
    s.insert_sandbox(&sandbox("a", "o1", SandboxState::Started)).await.unwrap();
    s.insert_sandbox(&sandbox("b", "o1", SandboxState::Stopped)).await.unwrap();
    s.insert_sandbox(&sandbox("c", "o1", SandboxState::Destroyed)).await.unwrap();
    s.insert_sandbox(&sandbox("d", "o2", SandboxState::Started)).await.unwrap();
    assert_eq!(s.sandbox_usage("o1").await.unwrap(), SandboxUsage { sandboxes: 2, cpu: 2, memory: 4, disk: 6 });
    assert_eq!(s.get_org("o2").await.unwrap().unwrap().name, "o2");
    assert!(s.get_org("o3").await.unwrap().is_none());
    assert_eq!(s.first_org().await.unwrap().unwrap().id, "o1", "the oldest, then the smallest id");
}

async fn preview_tokens_expire_and_go_with_their_sandbox(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_sandbox(&sandbox("x", "o1", SandboxState::Started)).await.unwrap();
    let t = |hash: &str, port, expires_at| PreviewTokenRecord {
        token_hash: hash.into(),
        sandbox_id: "x".into(),
        port,
        expires_at,
    };
    s.insert_preview_token(&t("old", 80, 10), 0).await.unwrap();
    s.insert_preview_token(&t("new", 65535, 100), 20).await.unwrap();
    assert!(s.get_preview_token("old", 20).await.unwrap().is_none(), "expired");
    assert_eq!(s.get_preview_token("new", 20).await.unwrap().unwrap(), t("new", 65535, 100));
    assert!(s.get_preview_token("new", 100).await.unwrap().is_none(), "expiry is exclusive");
    assert!(!s.delete_preview_token("x", 80, "new").await.unwrap(), "the port must match");
    s.insert_preview_token(&t("third", 80, 100), 20).await.unwrap();
    assert!(s.delete_preview_token("x", 80, "third").await.unwrap());
    s.delete_sandbox("x").await.unwrap();
    assert!(s.get_preview_token("new", 20).await.unwrap().is_none(), "tokens go with their sandbox");
}

async fn activity_never_moves_back_and_skips_deleted_sandboxes(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.insert_sandbox(&sandbox("x", "o1", SandboxState::Started)).await.unwrap();
    s.insert_sandbox(&sandbox("y", "o1", SandboxState::Started)).await.unwrap();
    s.record_sandbox_activity(&[("y".into(), 50), ("x".into(), 10), ("gone".into(), 5)]).await.unwrap();
    s.record_sandbox_activity(&[("x".into(), 30), ("y".into(), 40)]).await.unwrap();
    let mut got = s.sandbox_lifecycles().await.unwrap();
    got.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
    let at: Vec<_> = got.iter().map(|l| (l.sandbox_id.as_str(), l.last_activity_at)).collect();
    assert_eq!(at, [("x", 30), ("y", 50)]);
    s.delete_sandbox("x").await.unwrap();
    assert_eq!(s.sandbox_lifecycles().await.unwrap().len(), 1, "the row goes with its sandbox");
}

async fn an_archive_is_recorded_only_while_the_sandbox_is_in_the_expected_state(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut r = sandbox("x", "o1", SandboxState::Stopped);
    r.updated_at = 77;
    s.insert_sandbox(&r).await.unwrap();
    let a = SandboxArchive { digest: "sha256:disk".into(), size: 1 << 33 };
    assert!(!s.set_sandbox_archive_if("x", Some(&a), SandboxState::Archiving).await.unwrap());
    assert!(!s.set_sandbox_archive_if("none", Some(&a), SandboxState::Stopped).await.unwrap());
    assert!(s.set_sandbox_archive_if("x", Some(&a), SandboxState::Stopped).await.unwrap());
    let l = s.sandbox_lifecycles().await.unwrap();
    assert_eq!(l, [SandboxLifecycle { sandbox_id: "x".into(), last_activity_at: 77, archive: Some(a) }]);
    assert!(s.set_sandbox_archive_if("x", None, SandboxState::Stopped).await.unwrap());
    assert_eq!(s.sandbox_lifecycles().await.unwrap()[0].archive, None);
}

async fn every_image_a_snapshot_sandbox_or_archive_names_is_referenced(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut with_image = snap("a", "o1", "a", 1);
    with_image.image_digest = Some("sha256:snap".into());
    s.insert_snapshot(&with_image).await.unwrap();
    s.insert_snapshot(&snap("b", "o1", "b", 1)).await.unwrap();
    s.insert_sandbox(&sandbox("x", "o1", SandboxState::Stopped)).await.unwrap();
    let a = SandboxArchive { digest: "sha256:disk".into(), size: 1 };
    s.set_sandbox_archive_if("x", Some(&a), SandboxState::Stopped).await.unwrap();
    let want: HashSet<String> = ["sha256:snap", "sha256:x", "sha256:disk"].map(String::from).into();
    assert_eq!(s.referenced_images().await.unwrap(), want);
}

async fn writes_are_reported_to_change_subscribers(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut changes = s.changes();
    let mut r = sandbox("x", "o1", SandboxState::Creating);
    s.insert_sandbox(&r).await.unwrap();
    r.state = SandboxState::Started;
    s.update_sandbox_if(&r, &[SandboxState::Creating]).await.unwrap();
    s.delete_sandbox("x").await.unwrap();
    assert!(matches!(changes.recv().await.unwrap(), Change::Sandbox { created: true, previous: None, .. }));
    let Change::Sandbox { record, created: false, previous } = changes.recv().await.unwrap() else { panic!() };
    assert_eq!((record.state, previous), (SandboxState::Started, Some(SandboxState::Creating)));
    assert!(matches!(changes.recv().await.unwrap(), Change::SandboxDeleted { id } if id == "x"));
}

/// The migrations of both engines: what existing databases depend on.
mod migrations {
    use std::collections::BTreeMap;

    /// sha384 of each SQLite migration as released: sqlx refuses to open a database whose
    /// applied migration's file changed since, so these files never change.
    const RELEASED_SQLITE: [(i64, &str); 10] = [
        (1, "8da44eef7eadb8de62acb1f7d520d3a9262f4befa3285a378f5ba84d19dae355e0cc7a4700e32173df6c9ffc4f6edc4d"),
        (2, "79c51926ca1a4add0bc42425a796f07e86e51d665c66d0d7f68574224748677acc25aee63d2ee1a01ba3564a93df1ab2"),
        (3, "5fa28adbf7b06483a2ebfa04bf7b1a7fc71e260b8e42e42572e429b6b1c50011dad9157184cb76e4d9af7590f0dd50f6"),
        (5, "f9f6c31d69a83a2297e8747def53b3506c53d654c06d815b1e9be0f693fd7451c72d70ccd9a67e408c3ac6d2b4458c2f"),
        (6, "0df44141a165d50527517089b87d0be4b3d16bbe192f7a5af9e28624ca2ffc9628c885872e74279f484cb326fd38c57c"),
        (7, "95d1ecc67f8be03f3ad3733c1ec671962c7981dca927cb6e3101838ac5baa910d4bbf83bde505bde35d0eca37883ee50"),
        (8, "a258892bc57c038be54f1e1478c98019c2528125462a087c24310362444490a970f825f0ab92c7042132c3e0f6aca3f3"),
        (9, "af0b045ce39394b5a517dd5ff4d146a1d30504de54d37fc9a4b41bb6b0b6d3f8e5bbbfd4a9fd35d117bae596cc48b4ca"),
        (10, "8cb6723a293e42d9d134841496711748d70cef8fa1e974aa2b0da9a557ba2a224b35c244667a4b720c4d3fe1258eaa68"),
        (11, "0a479994173ad0b8a3eeed8f4585ee8a893330e03977431f8cefac12760f0a88f2dcdc313b5c83f36aa9b54e7120eb04"),
    ];

    fn versions(m: &sqlx::migrate::Migrator) -> BTreeMap<i64, String> {
        m.iter().map(|m| (m.version, m.description.to_string())).collect()
    }

    #[test]
    fn released_sqlite_migrations_keep_the_checksums_existing_databases_recorded() {
        let m = sqlx::migrate!("./migrations/sqlite");
        let got: BTreeMap<i64, String> = m.iter().map(|m| (m.version, hex::encode(&m.checksum))).collect();
        for (version, sum) in RELEASED_SQLITE {
            assert_eq!(got.get(&version).map(String::as_str), Some(sum), "migration {version} changed");
        }
    }

    #[test]
    fn both_engines_have_the_same_migrations_by_number_and_name() {
        let sqlite = versions(&sqlx::migrate!("./migrations/sqlite"));
        let postgres = versions(&sqlx::migrate!("./migrations/postgres"));
        assert_eq!(sqlite, postgres);
    }

    #[test]
    fn no_migration_sits_outside_the_engines_directories() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let stray: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        assert!(stray.is_empty(), "{stray:?}: put SQLite migrations in sqlite/ and their twins in postgres/");
    }
}
