//! Read-only lookups in a stack of overlay lower directories without mounting them.
//!
//! A stage's filesystem is its base rootfs plus the upper directories of its steps (overlay
//! "upper" format: a character device 0:0 is a whiteout, `trusted.overlay.opaque=y` (or
//! `user.overlay.opaque=y`) on a directory hides lower entries below it). COPY needs a few
//! answers from that stack — does `/app` exist and with what mode, what does `/etc/passwd`
//! say — and computing them here avoids a mount per step. Symlinks are followed inside the
//! merged view, never outside it.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const MAX_HOPS: usize = 40;

/// Lower directories, topmost first (overlay `lowerdir` order).
#[derive(Debug, Clone)]
pub struct LowerStack {
    lowers: Vec<PathBuf>,
}

/// What a path is in the merged view.
#[derive(Debug)]
pub struct Found {
    /// The file on this machine (in the topmost layer that has it).
    pub host: PathBuf,
    /// Its metadata (not following a final symlink).
    pub meta: Metadata,
}

impl LowerStack {
    /// A stack, topmost first.
    pub fn new(lowers: Vec<PathBuf>) -> Self {
        LowerStack { lowers }
    }

    /// The layer directories, topmost first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// Looks up an exact path (no symlink following) in the merged view.
    pub fn find(&self, comps: &[String]) -> Option<Found> {
        if comps.is_empty() {
            let host = self.lowers.first()?.clone();
            let meta = std::fs::symlink_metadata(&host).ok()?;
            return Some(Found { host, meta });
        }
        for layer in &self.lowers {
            let mut p = layer.clone();
            let mut hidden_below = false;
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                let Ok(meta) = std::fs::symlink_metadata(&p) else { break };
                if is_whiteout(&meta) {
                    return None;
                }
                if i + 1 == comps.len() {
                    return Some(Found { host: p, meta });
                }
                if !meta.is_dir() {
                    return None; // a non-directory here shadows everything below
                }
                if is_opaque(&p) {
                    hidden_below = true;
                }
            }
            if hidden_below {
                return None;
            }
        }
        None
    }

    /// Resolves `path` (absolute, in the image) following symlinks inside the merged view;
    /// the result's components may name something that does not exist yet.
    pub fn resolve(&self, path: &str) -> Option<Vec<String>> {
        let mut pending: Vec<String> = split(path).into_iter().rev().collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            done.push(c);
            if let Some(f) = self.find(&done)
                && f.meta.file_type().is_symlink()
            {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let target = std::fs::read_link(&f.host).ok()?;
                let target = target.to_string_lossy().into_owned();
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                pending.extend(split(&target).into_iter().rev());
            }
        }
        Some(done)
    }

    /// Metadata of `path` following symlinks.
    pub fn stat(&self, path: &str) -> Option<Found> {
        self.find(&self.resolve(path)?)
    }

    /// Reads a whole file (following symlinks), e.g. `/etc/passwd`.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let f = self.stat(path)?;
        if !f.meta.is_file() {
            return None;
        }
        std::fs::read(f.host).ok()
    }
}

/// Whether `meta` is an overlay whiteout (character device 0:0).
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether a directory carries overlay's opaque marker.
pub fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if let Ok(n) = rustix::fs::lgetxattr(dir, name, &mut buf)
            && buf[..n] == *b"y"
        {
            return true;
        }
    }
    false
}

fn split(p: &str) -> Vec<String> {
    p.split('/').filter(|s| !s.is_empty() && *s != ".").map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layers_win_and_symlinks_resolve_inside_the_stack() {
        let t = tempfile::tempdir().unwrap();
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("run")).unwrap();
        std::fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::create_dir_all(base.join("var")).unwrap();
        std::os::unix::fs::symlink("../run", base.join("var/run")).unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(top.join("etc/passwd"), "app:x:1000:1000::/home/app:/bin/sh\n").unwrap();
        let s = LowerStack::new(vec![top, base]);
        assert!(String::from_utf8(s.read("/etc/passwd").unwrap()).unwrap().starts_with("app"));
        assert_eq!(s.resolve("/var/run/x").unwrap(), ["run", "x"]);
        assert!(s.stat("/var/run").unwrap().meta.is_dir());
        assert!(s.stat("/nope").is_none());
    }

    #[test]
    fn a_whiteout_hides_the_lower_file() {
        let t = tempfile::tempdir().unwrap();
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        std::fs::create_dir_all(&top).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("gone"), "x").unwrap();
        let st = std::process::Command::new("mknod").arg(top.join("gone")).args(["c", "0", "0"]).status().unwrap();
        if !st.success() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let s = LowerStack::new(vec![top, base]);
        assert!(s.stat("/gone").is_none());
    }
}
