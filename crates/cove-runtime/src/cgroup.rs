//! Cgroups: a read-only look at a sandbox's memory cgroup, for OOM reporting; `pids.max` of
//! the parent cgroup (`--cgroup-parent`), so that all sandboxes together can never take every
//! PID of the host ([`limit_parent_pids`], at runtime start); and `favordynmods` on the
//! cgroup2 mount ([`favor_dynamic_mods`]). The launcher (`launch.rs`) and runc create and
//! remove the sandboxes' own cgroups.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 (or hybrid): `/sys/fs/cgroup/<controller>/<path>`.
    V1,
    /// Unified: `/sys/fs/cgroup/<path>`.
    V2,
}

/// Detects the layout: a v1 `memory` hierarchy wins (hybrid hosts keep memory on v1).
pub fn layout() -> Layout {
    if Path::new(CGROUP_ROOT).join("memory/memory.limit_in_bytes").exists() { Layout::V1 } else { Layout::V2 }
}

/// The directory of `controller` for `cgroups_path` (v2 ignores the controller).
pub fn dir(controller: &str, cgroups_path: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    match layout() {
        Layout::V1 => Path::new(CGROUP_ROOT).join(controller).join(rel),
        Layout::V2 => Path::new(CGROUP_ROOT).join(rel),
    }
}

/// Hands the cgroup `cgroups_path` to `uid:gid` (the sandbox's root) in every hierarchy, as
/// runc does for a rootless container: its directory (so that an engine inside can make
/// child cgroups) and the files that move processes (`cgroup.procs`, `tasks`) or enable
/// controllers for children (`cgroup.subtree_control`, `cgroup.threads`). The limit files stay
/// root's, so the sandbox cannot raise its own limits, and children are held to them.
pub fn delegate(cgroups_path: &str, uid: u32, gid: u32) -> std::io::Result<usize> {
    let rel = cgroups_path.trim_start_matches('/');
    let mut dirs = Vec::new();
    match layout() {
        Layout::V2 => dirs.push(Path::new(CGROUP_ROOT).join(rel)),
        Layout::V1 => {
            for e in std::fs::read_dir(CGROUP_ROOT)?.flatten() {
                // `cpu` → `cpu,cpuacct` and the like are links to a hierarchy listed anyway.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path().join(rel));
                }
            }
        }
    }
    let mut handed = 0;
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))?;
        for f in ["cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads"] {
            match std::os::unix::fs::lchown(dir.join(f), Some(uid), Some(gid)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        handed += 1;
    }
    Ok(handed)
}

/// Whether the kernel OOM-killed anything in the cgroup (`oom_kill` counter of
/// `memory.oom_control` on v1, `memory.events` on v2). False when the cgroup is gone.
pub fn oom_killed(cgroups_path: &str) -> bool {
    let file = match layout() {
        Layout::V1 => dir("memory", cgroups_path).join("memory.oom_control"),
        Layout::V2 => dir("memory", cgroups_path).join("memory.events"),
    };
    std::fs::read_to_string(file).map(|s| oom_kill_count(&s) > 0).unwrap_or(false)
}

/// A failed cgroup write.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host's PID limit could not be read.
    #[error("read the host's PID limit {path}")]
    PidMax {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither a v1 `pids` hierarchy nor a unified hierarchy offering `pids`.
    #[error("no pids cgroup controller under {root} (neither {root}/pids nor pids in {root}/cgroup.controllers)")]
    NoPidsController {
        /// The cgroup mount point.
        root: PathBuf,
    },
    /// Creating the parent cgroup or writing its limit failed.
    #[error("limit the processes of cgroup {parent} to {max}: write {file}")]
    LimitPids {
        /// The parent cgroup.
        parent: String,
        /// The limit.
        max: u64,
        /// The file or directory.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// All sandboxes together get half of the host's PIDs: the other half stays for the host,
/// however many sandboxes fork-bomb at once.
pub fn parent_pids_limit(pid_max: u64) -> u64 {
    (pid_max / 2).max(1)
}

/// The cgroup2 mount of a mountinfo text without `favordynmods`: (mount point, its super
/// options to keep).
fn cgroup2_without_favordynmods(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup2" {
            return None;
        }
        let opts = r.nth(1).unwrap_or("");
        if opts.split(',').any(|o| o == "favordynmods") {
            return None;
        }
        let keep: Vec<&str> = opts.split(',').filter(|o| !matches!(*o, "rw" | "ro" | "")).collect();
        Some((PathBuf::from(left.split_whitespace().nth(4)?), keep.join(",")))
    })
}

/// Mounts the host's cgroup2 hierarchy with `favordynmods` when it lacks it; returns where
/// (`None`: nothing to do). Moving a process into a cgroup (every sandbox start, in every
/// hierarchy) otherwise waits for an RCU grace period to switch the kernel's cgroup
/// threadgroup lock into its slow mode: 10–18 ms of a lone create on this kind of VM, for
/// ~0 CPU. The lock is one for all hierarchies, so the v2 mount's option serves v1 (hybrid)
/// too; the price, per the kernel's documentation, is slightly dearer forks and exits.
pub fn favor_dynamic_mods() -> std::io::Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some((target, keep)) = cgroup2_without_favordynmods(&info) else { return Ok(None) };
    let data = if keep.is_empty() { "favordynmods".to_string() } else { format!("{keep},favordynmods") };
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount_remount(&target, rustix::mount::MountFlags::empty(), data.as_c_str())?;
    Ok(Some(target))
}

/// Sets `pids.max` of `parent` to [`parent_pids_limit`] of `/proc/sys/kernel/pid_max`,
/// creating the cgroup if needed (v1 `pids` hierarchy, or v2 with `+pids` enabled down to
/// it). Returns the limit.
pub fn limit_parent_pids(parent: &str) -> Result<u64, CgroupError> {
    let path = PathBuf::from("/proc/sys/kernel/pid_max");
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::PidMax { path: path.clone(), source })?;
    let pid_max = text
        .trim()
        .parse::<u64>()
        .map_err(|e| CgroupError::PidMax { path, source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })?;
    let max = parent_pids_limit(pid_max);
    let file = limit_pids_at(Path::new(CGROUP_ROOT), parent, max)?;
    tracing::info!(cgroup = parent, max, pid_max, file = %file.display(), "limited the processes of all sandboxes");
    Ok(max)
}

/// [`limit_parent_pids`] under the cgroup mount `root`; returns the `pids.max` file written.
fn limit_pids_at(root: &Path, parent: &str, max: u64) -> Result<PathBuf, CgroupError> {
    let rel = parent.trim_matches('/');
    let err = |file: &Path| {
        let file = file.to_path_buf();
        move |source| CgroupError::LimitPids { parent: parent.to_string(), max, file, source }
    };
    let dir = if root.join("pids/cgroup.procs").is_file() {
        let dir = root.join("pids").join(rel);
        std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        dir
    } else {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "pids") {
            return Err(CgroupError::NoPidsController { root: root.to_path_buf() });
        }
        // v2: a controller's files exist in a cgroup only when its parent delegates it.
        let mut dir = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let control = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "pids") {
                std::fs::write(&control, "+pids").map_err(err(&control))?;
            }
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(&dir)(e)),
            }
        }
        dir
    };
    let file = dir.join("pids.max");
    std::fs::write(&file, max.to_string()).map_err(err(&file))?;
    Ok(file)
}

fn oom_kill_count(text: &str) -> u64 {
    text.lines().filter_map(|l| l.strip_prefix("oom_kill ")).filter_map(|v| v.trim().parse().ok()).next().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_counter_is_read_from_v1_and_v2_files() {
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn all_sandboxes_together_get_half_of_the_hosts_pids() {
        assert_eq!(parent_pids_limit(32768), 16384);
        assert_eq!(parent_pids_limit(4194304), 2097152);
        assert_eq!(parent_pids_limit(1), 1);
    }

    #[test]
    fn on_cgroup_v1_the_limit_goes_into_the_pids_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pids")).unwrap();
        std::fs::write(root.path().join("pids/cgroup.procs"), "").unwrap();
        let file = limit_pids_at(root.path(), "/cove/test", 16384).unwrap();
        assert_eq!(file, root.path().join("pids/cove/test/pids.max"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "16384");
        limit_pids_at(root.path(), "/cove/test", 100).expect("a restart writes it again");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "100");
    }

    #[test]
    fn on_cgroup_v2_pids_is_delegated_down_to_the_parent_before_the_limit_is_written() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        // In a real cgroupfs the kernel creates this file with the directory.
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::write(root.path().join("a/cgroup.subtree_control"), "cpu\n").unwrap();
        let file = limit_pids_at(root.path(), "/a/b", 42).unwrap();
        assert_eq!(file, root.path().join("a/b/pids.max"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "42");
        assert_eq!(std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(), "+pids");
        assert_eq!(std::fs::read_to_string(root.path().join("a/cgroup.subtree_control")).unwrap(), "+pids");
    }

    #[test]
    fn a_host_without_a_pids_controller_is_an_error_not_a_silent_skip() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert!(matches!(limit_pids_at(root.path(), "/cove", 10), Err(CgroupError::NoPidsController { .. })));
    }

    #[test]
    fn the_cgroup2_mount_lacking_favordynmods_is_found_with_the_options_it_keeps() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            super::cgroup2_without_favordynmods(info),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "nsdelegate".to_string()))
        );
        let done = info.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
        assert_eq!(super::cgroup2_without_favordynmods(&done), None);
    }
}
