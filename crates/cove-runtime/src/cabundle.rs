//! Extra trusted certificates for sandboxes and build steps (`--sandbox-ca-bundle`).
//!
//! Contract: when the server is given a PEM file (a corporate TLS-intercepting proxy's CA,
//! say), every sandbox and every build step sees, read-only at [`SANDBOX_PATH`], the image's
//! own bundle ([`IMAGE_BUNDLE`]) followed by those certificates, and the variables of
//! [`ENV_VARS`] point at it (an image or user value of the same variable wins). The merged
//! file is generated in the bundle directory at every start and bind-mounted at a path of its
//! own, not over the image's bundle: `apt-get install ca-certificates` inside a sandbox or a
//! `RUN` step renames a new bundle into place, which a mount point there would refuse
//! (`EBUSY`). Nothing of it is written into the sandbox's disk or into a built layer. The
//! image's bundle is read with `RESOLVE_IN_ROOT` (a sandbox's own disk can plant links),
//! regular files only, bounded in size.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where sandboxes find the merged bundle.
pub const SANDBOX_PATH: &str = "/etc/cove/ca-certificates.crt";
/// The image's own bundle (Debian's and Alpine's system path), the start of the merged one.
pub const IMAGE_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Variables pointed at [`SANDBOX_PATH`]: OpenSSL (and so Python's `ssl`), pip, requests,
/// Node.js, curl and git read them.
pub const ENV_VARS: &[&str] =
    &["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"];
/// The most of an image's own bundle or of the extra file that is read.
const MAX_BYTES: u64 = 8 << 20;
const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// The extra certificates could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    /// The file could not be read.
    #[error("read the sandbox CA bundle {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or is too large.
    #[error("sandbox CA bundle {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Reads and checks the server's extra certificates: PEM, at least one certificate, at most
/// 8 MiB, text only.
pub fn load_extra(path: &Path) -> Result<String, CaBundleError> {
    let read = |source| CaBundleError::Read { path: path.to_path_buf(), source };
    let invalid = |why: &str| CaBundleError::Invalid { path: path.to_path_buf(), why: why.into() };
    let f = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    f.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(invalid("larger than 8 MiB"));
    }
    if !text.contains(PEM_BEGIN) {
        return Err(invalid("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(text)
}

/// The image's bundle at [`IMAGE_BUNDLE`] under `rootfs` (empty when missing, not a regular
/// file, or unreadable), then `extra`.
pub fn merged(rootfs: &Path, extra: &str) -> Vec<u8> {
    let mut out = read_in_root(rootfs, IMAGE_BUNDLE.trim_start_matches('/'));
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(extra.as_bytes());
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

fn read_in_root(root: &Path, rel: &str) -> Vec<u8> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let Ok(dir) = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return Vec::new();
    };
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::openat2(&dir, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT) else {
        return Vec::new();
    };
    // A FIFO or device planted there must not block or feed the read.
    if rustix::fs::fstat(&fd).map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode)).ok()
        != Some(rustix::fs::FileType::RegularFile)
    {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = std::fs::File::from(fd).take(MAX_BYTES).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_merged_bundle_is_the_images_followed_by_the_extra_certificates() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::fs::write(root.path().join("etc/ssl/certs/ca-certificates.crt"), "IMAGE").unwrap();
        assert_eq!(merged(root.path(), CERT), format!("IMAGE\n{CERT}").into_bytes());
    }

    #[test]
    fn an_image_without_a_bundle_gets_the_extra_certificates_alone() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(merged(root.path(), CERT), CERT.as_bytes());
    }

    #[test]
    fn a_bundle_link_pointing_at_a_host_file_is_resolved_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host.path(), "HOST SECRET").unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        let out = String::from_utf8(merged(root.path(), CERT)).unwrap();
        assert!(!out.contains("HOST SECRET"), "{out}");
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "not a certificate").unwrap();
        let e = load_extra(f.path()).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate") && e.contains(&f.path().display().to_string()), "{e}");
        std::fs::write(f.path(), CERT).unwrap();
        assert_eq!(load_extra(f.path()).unwrap(), CERT);
    }
}
