//! Users and groups read straight from `/etc/passwd` and `/etc/group`: the agent is a static
//! binary and must not go through glibc's NSS (which would try to load shared modules).

use std::path::{Path, PathBuf};

/// The user and group databases of the sandbox.
#[derive(Debug, Default)]
pub struct Users {
    /// (name, uid, home)
    users: Vec<(String, u32, String)>,
    /// (name, gid)
    groups: Vec<(String, u32)>,
}

impl Users {
    /// Reads `/etc/passwd` and `/etc/group`; missing files give empty databases.
    pub fn load() -> Self {
        Self::load_from(Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    /// Reads the given files (for tests).
    pub fn load_from(passwd: &Path, group: &Path) -> Self {
        let passwd = std::fs::read_to_string(passwd).unwrap_or_default();
        let group = std::fs::read_to_string(group).unwrap_or_default();
        Self::parse(&passwd, &group)
    }

    fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let uid = f.get(2)?.parse().ok()?;
                Some((f[0].to_string(), uid, f.get(5).copied().unwrap_or("").to_string()))
            })
            .collect();
        let groups = group
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f[0].to_string(), f.get(2)?.parse().ok()?))
            })
            .collect();
        Users { users, groups }
    }

    /// The user's name, or the uid as a string.
    pub fn user_name(&self, uid: u32) -> String {
        self.users.iter().find(|u| u.1 == uid).map_or_else(|| uid.to_string(), |u| u.0.clone())
    }

    /// The group's name, or the gid as a string.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups.iter().find(|g| g.1 == gid).map_or_else(|| gid.to_string(), |g| g.0.clone())
    }

    /// The home directory of `uid`, if it has a non-empty one.
    pub fn home_of(&self, uid: u32) -> Option<PathBuf> {
        self.users.iter().find(|u| u.1 == uid && !u.2.is_empty()).map(|u| PathBuf::from(&u.2))
    }

    /// A uid from a name or a number.
    pub fn uid(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| self.users.iter().find(|u| u.0 == name).map(|u| u.1))
    }

    /// A gid from a name or a number.
    pub fn gid(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| self.groups.iter().find(|g| g.0 == name).map(|g| g.1))
    }
}

/// The login shell `passwd` (the text of `/etc/passwd`) gives `uid`, if it names one.
pub fn login_shell(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let shell = f.get(6)?.trim();
        (f.get(2)?.parse::<u32>().ok()? == uid && !shell.is_empty()).then(|| shell.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_files_and_unknown_ids_stay_numeric() {
        let u = Users::parse(
            "root:x:0:0:root:/root:/bin/sh\n# comment\ndaytona:x:1000:1000::/home/daytona:/bin/sh\n",
            "root:x:0:\nstaff:x:50:a,b\n",
        );
        assert_eq!(u.user_name(1000), "daytona");
        assert_eq!(u.user_name(4242), "4242");
        assert_eq!(u.group_name(50), "staff");
        assert_eq!(u.group_name(7), "7");
        assert_eq!(u.home_of(0), Some(PathBuf::from("/root")));
        assert_eq!(u.uid("daytona"), Some(1000));
        assert_eq!(u.gid("12"), Some(12));
    }

    #[test]
    fn the_login_shell_is_the_seventh_field_of_the_users_line() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# x:x:1000:\nnologin:x:7:7::/:\n";
        assert_eq!(login_shell(passwd, 0).as_deref(), Some("/bin/bash"));
        assert_eq!(login_shell(passwd, 7), None);
        assert_eq!(login_shell(passwd, 1000), None);
    }
}
