//! `Runc::state`, `kill` and `delete` work from runc's files instead of running runc: through
//! a real container's life (created, running, paused, resumed, killed, stopped, deleted) they
//! must agree with runc.
//! Needs root, `runc` and a static busybox at /bin/busybox (skipped with a message otherwise).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cove_runtime::runc::{RUNC, Runc, State};

#[allow(dead_code)]
mod common;
use common::{busybox_rootfs, is_root};

async fn both(runc: &Runc, id: &str) -> (Option<State>, Option<State>) {
    (runc.state(id).await.unwrap(), runc.state_from_runc(id).await.unwrap())
}

fn runc_cli(root: &Path, args: &[&str]) {
    let out = Command::new(RUNC).arg("--root").arg(root).args(args).output().unwrap();
    assert!(out.status.success(), "runc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn state_kill_and_delete_without_runc_processes_agree_with_runc_through_a_containers_life() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, root) = (tmp.path().join("bundle"), tmp.path().join("state"));
    busybox_rootfs(&bundle.join("rootfs"), &[]);
    let out = Command::new(RUNC).args(["spec", "--bundle"]).arg(&bundle).output().unwrap();
    assert!(out.status.success());
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let id = format!("cove-state-test-{}", std::process::id());
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    cfg["linux"]["cgroupsPath"] = format!("/cove-state-test/{id}").into();
    std::fs::write(&path, cfg.to_string()).unwrap();

    let runc = Runc::new(&root);
    assert_eq!(both(&runc, &id).await, (None, None), "unknown");
    let (console, log) = (tmp.path().join("console"), tmp.path().join("runc.log"));
    runc.create(&id, &bundle, &console, &log).await.unwrap();
    let guard = scopeguard(&root, &id);

    let (ours, theirs) = both(&runc, &id).await;
    assert_eq!(ours.as_ref().map(|s| s.status.as_str()), Some("created"));
    assert_eq!(ours, theirs);
    assert!(runc.start(&id).await.unwrap());
    let (ours, theirs) = both(&runc, &id).await;
    assert_eq!(ours.as_ref().map(|s| s.status.as_str()), Some("running"));
    assert_eq!(ours, theirs);
    runc_cli(&root, &["pause", &id]);
    let (ours, theirs) = both(&runc, &id).await;
    assert_eq!(ours.as_ref().map(|s| s.status.as_str()), Some("paused"));
    assert_eq!(ours, theirs);
    runc_cli(&root, &["resume", &id]);
    assert_eq!(both(&runc, &id).await.0.map(|s| s.status), Some("running".into()));
    runc.kill(&id, "KILL").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ours, theirs) = both(&runc, &id).await;
        if ours.as_ref().is_some_and(|s| s.status == "stopped") {
            assert_eq!(ours, Some(State { status: "stopped".into(), pid: 0 }));
            assert_eq!(ours, theirs);
            break;
        }
        assert!(Instant::now() < deadline, "never stopped: {ours:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Deleted from here (no runc process): runc no longer knows it, and every cgroup it
    // had is gone.
    let cgroups: Vec<String> = {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(&id).join("state.json")).unwrap()).unwrap();
        state["cgroup_paths"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    assert!(cgroups.iter().any(|c| Path::new(c).exists()), "{cgroups:?}");
    runc.delete(&id).await.unwrap();
    assert_eq!(both(&runc, &id).await, (None, None), "deleted");
    for c in &cgroups {
        assert!(!Path::new(c).exists(), "{c} left behind");
    }
    drop(guard);
}

/// `runc delete --force` of the container however the test ends.
fn scopeguard<'a>(root: &'a Path, id: &'a str) -> impl Drop + 'a {
    struct G<'a>(&'a Path, &'a str);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            let _ = Command::new(RUNC).arg("--root").arg(self.0).args(["delete", "--force", self.1]).output();
            for h in common::cgroup_hierarchies() {
                let _ = std::fs::remove_dir(h.join("cove-state-test"));
            }
        }
    }
    G(root, id)
}
