//! Attaching a disk image to a fresh loop device, by ioctl.
//!
//! Contract: [`attach`] binds `image` to a loop device nobody else holds and answers it open,
//! with autoclear set, so the device is released when the last holder goes (our handle after
//! a mount, or the unmount of the file system on it). It never reuses a device already bound
//! to a file: `mount -o loop` (libmount) does reuse one whose backing file has the same device
//! and inode numbers, and a stale device left bound to a *deleted* disk image matches a new
//! image that got the freed inode number, so a sandbox could be handed another sandbox's old
//! file system (seen as a damaged disk that "mounted" in CI). This is written here rather than
//! with the `loopdev-3` crate, which needs bindgen and libclang at build time for four ioctls.
//!
//! `LOOP_CONFIGURE` (Linux 5.8) binds and sets the flags in one step; older kernels get
//! `LOOP_SET_FD` then `LOOP_SET_STATUS64`.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process may take the free device between asking and binding: ask again.
const ATTEMPTS: usize = 32;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Why an image could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `/dev/loop-control` or the image could not be opened.
    #[error("open {path}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a loop ioctl.
    #[error("{op} on {device}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The device.
        device: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Every free device was taken by someone else before it could be bound.
    #[error("no free loop device after {ATTEMPTS} attempts")]
    Busy,
}

/// A loop device bound to an image, held open. Dropping it lets autoclear release the device
/// once nothing else (a mount) holds it.
#[derive(Debug)]
pub struct Attached {
    device: File,
    path: PathBuf,
}

impl Attached {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's open file.
    pub fn file(&self) -> &File {
        &self.device
    }
}

fn ioctl_err(op: &'static str, device: &Path) -> impl FnOnce(std::io::Error) -> LoopError {
    let device = device.to_path_buf();
    move |source| LoopError::Ioctl { op, device, source }
}

/// Binds `image` (opened read-write, without following a link) to a fresh loop device with
/// autoclear set.
pub fn attach(image: &Path) -> Result<Attached, LoopError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(image)
        .map_err(|source| LoopError::Open { path: image.into(), source })?;
    let control_path = Path::new("/dev/loop-control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(control_path)
        .map_err(|source| LoopError::Open { path: control_path.into(), source })?;
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns a device number; the
        // descriptor is open for the whole call.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(ioctl_err("LOOP_CTL_GET_FREE", control_path)(std::io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| LoopError::Open { path: path.clone(), source })?;
        match bind(&device, &backing) {
            Ok(()) => return Ok(Attached { device, path }),
            // Taken by someone else between GET_FREE and the bind: ask for another.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(ioctl_err("bind loop device", &path)(e)),
        }
    }
    Err(LoopError::Busy)
}

fn bind(device: &File, backing: &File) -> std::io::Result<()> {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let config = LoopConfig { fd: backing.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` lays out exactly
    // (repr(C)); the pointer is valid for the call and both descriptors are open.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(e);
    }
    // A kernel before 5.8: bind, then set autoclear.
    // SAFETY: LOOP_SET_FD takes the backing descriptor by value; both descriptors are open.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    info.lo_flags = LO_FLAGS_AUTOCLEAR;
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, laid out exactly by `LoopInfo64`;
    // the pointer is valid for the call.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64, &info as *const LoopInfo64) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument; undoes the bind above.
        unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD) };
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing_of(dev: &Path) -> Option<String> {
        let name = dev.file_name()?.to_str()?;
        std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok().map(|s| s.trim().to_string())
    }

    #[test]
    fn each_attach_gets_its_own_device_even_for_the_same_file_and_autoclear_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let a = attach(&img).unwrap();
        let b = attach(&img).unwrap();
        assert_ne!(a.path(), b.path(), "a device bound to the same file is never reused");
        let want = std::fs::canonicalize(&img).unwrap().to_string_lossy().into_owned();
        assert_eq!(backing_of(a.path()).as_deref(), Some(want.as_str()));
        let autoclear = std::fs::read_to_string(format!(
            "/sys/block/{}/loop/autoclear",
            a.path().file_name().unwrap().to_str().unwrap()
        ))
        .unwrap();
        assert_eq!(autoclear.trim(), "1");
        let pa = a.path().to_path_buf();
        drop(a);
        drop(b);
        // Autoclear runs when the last holder closes; the kernel may do it a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while backing_of(&pa).as_deref() == Some(want.as_str()) {
            assert!(std::time::Instant::now() < deadline, "{} still bound", pa.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn an_image_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let e = attach(&link).unwrap_err();
        assert!(matches!(e, LoopError::Open { .. }), "{e}");
    }
}
