//! Read-only look at a sandbox's memory cgroup, for OOM reporting. runc creates and removes
//! the cgroups; nothing here writes them.

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

/// Whether the kernel OOM-killed anything in the cgroup (`oom_kill` counter of
/// `memory.oom_control` on v1, `memory.events` on v2). False when the cgroup is gone.
pub fn oom_killed(cgroups_path: &str) -> bool {
    let file = match layout() {
        Layout::V1 => dir("memory", cgroups_path).join("memory.oom_control"),
        Layout::V2 => dir("memory", cgroups_path).join("memory.events"),
    };
    std::fs::read_to_string(file).map(|s| oom_kill_count(&s) > 0).unwrap_or(false)
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
}
