//! Resolves an image's `USER` (`name`, `uid`, `uid:gid`, `name:group`) against the sandbox's
//! own `/etc/passwd` and `/etc/group`. Files are opened with `RESOLVE_IN_ROOT`, so a symlink
//! in an untrusted image cannot make us read a host file.

use std::io::Read;
use std::path::Path;

/// A failed user lookup.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user is a name that `/etc/passwd` does not list.
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UnknownUser {
        /// The name.
        user: String,
    },
    /// The group is a name that `/etc/group` does not list.
    #[error("group {group:?} not found in the image's /etc/group")]
    UnknownGroup {
        /// The name.
        group: String,
    },
}

/// Who the sandbox's main process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups from `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// Home directory (`/root` for root without a passwd entry, `/` otherwise).
    pub home: String,
    /// User name when known.
    pub name: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `<root>/<rel>` without following links out of `root`; missing or unreadable ⇒ empty.
fn read_in_root(root: &Path, rel: &str) -> String {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let Ok(dir) = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return String::new();
    };
    let Ok(fd) = rustix::fs::openat2(&dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::IN_ROOT)
    else {
        return String::new();
    };
    let mut s = String::new();
    let _ = std::fs::File::from(fd).take(4 << 20).read_to_string(&mut s);
    s
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry { name: f[0].into(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5].into() })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].into(),
                gid: f[2].parse().ok()?,
                members: f[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect(),
            })
        })
        .collect()
}

/// Resolves `user` (None or empty ⇒ root) inside the root filesystem at `root`.
pub fn resolve(root: &Path, user: Option<&str>) -> Result<ResolvedUser, UserError> {
    resolve_from(&read_in_root(root, "etc/passwd"), &read_in_root(root, "etc/group"), user)
}

fn resolve_from(passwd: &str, group: &str, user: Option<&str>) -> Result<ResolvedUser, UserError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let spec = user.map(str::trim).filter(|u| !u.is_empty()).unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(users.iter().find(|e| e.name == u).ok_or_else(|| UserError::UnknownUser { user: u.into() })?),
    };
    let uid = entry.map_or_else(|| u.parse().unwrap_or(0), |e| e.uid);
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups.iter().find(|e| e.name == g).ok_or_else(|| UserError::UnknownGroup { group: g.into() })?.gid
            }
        },
        None => entry.map_or(0, |e| e.gid),
    };
    let name = entry.map(|e| e.name.clone());
    let mut additional_gids: Vec<u32> = match (&name, g) {
        (Some(n), None) => groups.iter().filter(|e| e.members.contains(n) && e.gid != gid).map(|e| e.gid).collect(),
        _ => Vec::new(),
    };
    additional_gids.dedup();
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() });
    Ok(ResolvedUser { uid, gid, additional_gids, home, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nstaff:x:50:\n";

    #[test]
    fn no_user_means_root_with_root_home() {
        let u = resolve_from(PASSWD, GROUP, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn a_user_name_resolves_to_its_ids_home_and_groups() {
        let u = resolve_from(PASSWD, GROUP, Some("app")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.additional_gids, [10]);
    }

    #[test]
    fn numeric_uid_and_gid_work_even_without_passwd_entries() {
        let u = resolve_from("", "", Some("1234:5678")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1234, 5678, "/"));
    }

    #[test]
    fn a_group_name_after_the_colon_is_looked_up() {
        let u = resolve_from(PASSWD, GROUP, Some("app:staff")).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(resolve_from(PASSWD, GROUP, Some("nobody")), Err(UserError::UnknownUser { .. })));
        assert!(matches!(resolve_from(PASSWD, GROUP, Some("app:nogroup")), Err(UserError::UnknownGroup { .. })));
    }

    #[test]
    fn a_passwd_symlink_pointing_at_a_host_file_is_resolved_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "evil:x:4242:4242::/evil:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/passwd")).unwrap();
        assert!(matches!(resolve(dir.path(), Some("evil")), Err(UserError::UnknownUser { .. })));
    }
}
