//! A pool of pre-formatted disk images under `<root>/.pool/`, so that creating a sandbox
//! renames a ready image into its bundle instead of running `mkfs.ext4` on the hot path.
//!
//! ```text
//! <root>/.pool/
//!   <size_mib>-<uuid>.img   finished: ext4 of exactly size_mib MiB, every block allocated
//!                           (`disk::create_image`), never used
//!   tmp-<uuid>              being formatted (removed when found at startup)
//!   mnt/                    a private bind mount of itself
//!     <size_mib>-<uuid>/    the image of that name, pre-mounted (loop device, ext4, `upper/`
//!                           and `work/` made)
//! ```
//!
//! A finished image is also mounted ahead of time, so that a create takes a mounted disk:
//! a `rename(2)` of the image and a `mount(MS_MOVE)` of its mount into the bundle, instead
//! of attaching a loop device and mounting ext4 while the caller waits (~5–10 ms of a cold
//! create). Pre-mounting starts with the first create that takes a disk (a server that never
//! creates a sandbox holds no mounts), and stops at [`DiskPool::close`] (or drop), which
//! unmounts them all. `mnt/` is then a private mount point of its own, because the kernel
//! moves only mounts whose parent mount is not shared. Mounts found there at startup are a
//! previous server's: they are unmounted and their images kept as plain pool images. Where
//! `mnt/` cannot be made (no `CAP_SYS_ADMIN`), images are pooled unmounted.
//!
//! Images are made one at a time by a single background task (tokio) for the few sizes asked
//! for most recently, [`PER_SIZE`] of each. An image is handed out only when its name *and*
//! its length say it has the requested size. Taking one is a `rename(2)` into the bundle (the
//! pool lives on the same filesystem); whatever goes wrong there falls back to formatting a
//! fresh image, so the pool only ever makes a create faster. Since pool images hold real
//! blocks, the filler makes one only while the data filesystem keeps the reserve
//! ([`DiskPool::set_reserve`]) plus one more disk of that size free after it (so the pool
//! never takes the room a create needs), and otherwise waits for the next `refill`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::disk;

/// Ready images kept per size.
pub(crate) const PER_SIZE: usize = 2;
/// Sizes kept (most recently asked for first); images of older sizes are deleted.
pub(crate) const MAX_SIZES: usize = 4;
const TMP_PREFIX: &str = "tmp-";
/// How long the filler waits before it starts (see `fill`).
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(30);
/// The directory of pre-mounted images.
const MNT_DIR: &str = "mnt";
const SUFFIX: &str = ".img";

/// A finished image, and where it is mounted if it was pre-mounted.
#[derive(Debug)]
struct Ready {
    image: PathBuf,
    mount: Option<PathBuf>,
}

impl Ready {
    /// Unmounts and deletes it.
    fn discard(self) {
        if let Some(m) = &self.mount {
            let _ = disk::unmount(m);
            let _ = std::fs::remove_dir(m);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

#[derive(Debug, Default)]
struct State {
    /// Finished images by size in MiB.
    ready: HashMap<u64, Vec<Ready>>,
    /// Sizes to keep images of, most recently asked for first.
    recent: VecDeque<u64>,
    /// Whether the filler task is running.
    filling: bool,
}

/// The image pool of one runtime.
#[derive(Debug)]
pub(crate) struct DiskPool {
    dir: PathBuf,
    state: Mutex<State>,
    closed: AtomicBool,
    /// Bytes every new image must leave free on the filesystem (`--disk-reserve`).
    reserve: AtomicU64,
    /// Images are sparse (`--sandbox-disks=sparse`): they take no room but the reserve's.
    sparse: AtomicBool,
    /// Whether finished images are mounted under `mnt/` ahead of time: one of the
    /// `PREMOUNT_*` states.
    premount: std::sync::atomic::AtomicU8,
}

/// No create took a disk yet: nothing is pre-mounted.
const PREMOUNT_OFF: u8 = 0;
/// A create took one: pre-mount, making `mnt/` a private mount point first.
const PREMOUNT_WANTED: u8 = 1;
/// `mnt/` is a private mount point: pre-mount.
const PREMOUNT_READY: u8 = 2;
/// `mnt/` could not be made one: pool images unmounted.
const PREMOUNT_FAILED: u8 = 3;

/// `<size>-<uuid>.img` → size.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (size, id) = stem.split_once('-')?;
    uuid::Uuid::parse_str(id).ok()?;
    size.parse().ok().filter(|s| *s > 0)
}

/// Whether `path` is a regular file of exactly `size_mib` MiB (not following symlinks).
fn has_size(path: &Path, size_mib: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && Some(m.len()) == size_mib.checked_mul(1 << 20))
}

impl DiskPool {
    /// Opens (creating) the pool directory: half-written and unrecognised files are removed,
    /// finished images of the right length are adopted (their sizes count as recent).
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        unmount_stale(&dir.join(MNT_DIR));
        let mut found: Vec<(u64, std::time::SystemTime, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == MNT_DIR {
                continue;
            }
            match parse_name(&name) {
                Some(size) if has_size(&path, size) => {
                    let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                    found.push((size, mtime, path));
                }
                _ => {
                    tracing::debug!(path = %path.display(), "removing stale pool file");
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
            }
        }
        // Newest first: the sizes made last are the ones asked for last.
        found.sort_by_key(|f| std::cmp::Reverse(f.1));
        let mut st = State::default();
        for (size, _, path) in found {
            if !st.recent.contains(&size) && st.recent.len() < MAX_SIZES {
                st.recent.push_back(size);
            }
            let ready = st.ready.entry(size).or_default();
            if st.recent.contains(&size) && ready.len() < PER_SIZE {
                ready.push(Ready { image: path, mount: None });
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(DiskPool {
            dir,
            state: Mutex::new(st),
            closed: AtomicBool::new(false),
            reserve: AtomicU64::new(0),
            sparse: AtomicBool::new(false),
            premount: std::sync::atomic::AtomicU8::new(PREMOUNT_OFF),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `size_mib` as most recently asked for; images of sizes that fall out are deleted.
    pub(crate) fn note_size(&self, size_mib: u64) {
        let evicted = {
            let mut st = self.lock();
            st.recent.retain(|s| *s != size_mib);
            st.recent.push_front(size_mib);
            let mut evicted = Vec::new();
            while st.recent.len() > MAX_SIZES {
                if let Some(old) = st.recent.pop_back() {
                    evicted.extend(st.ready.remove(&old).unwrap_or_default());
                }
            }
            evicted
        };
        for r in evicted {
            r.discard();
        }
    }

    /// Moves a ready image of exactly `size_mib` MiB to `dest`, unmounted; `false` when there
    /// is none.
    pub(crate) fn take(&self, size_mib: u64, dest: &Path) -> bool {
        self.take_to(size_mib, dest, None).is_some()
    }

    /// Moves a ready image of exactly `size_mib` MiB to `dest` and, when it is pre-mounted,
    /// its mount to `mount_at`. `None` when there is none; `Some(true)` when `mount_at` now
    /// holds its file system (with `upper/` and `work/`), `Some(false)` when the caller
    /// mounts it.
    pub(crate) fn take_mounted(&self, size_mib: u64, dest: &Path, mount_at: &Path) -> Option<bool> {
        self.take_to(size_mib, dest, Some(mount_at))
    }

    fn take_to(&self, size_mib: u64, dest: &Path, mount_at: Option<&Path>) -> Option<bool> {
        self.note_size(size_mib);
        if mount_at.is_some() {
            self.want_premount();
        }
        loop {
            let ready = self.lock().ready.get_mut(&size_mib).and_then(Vec::pop)?;
            // The name said so; the file must agree, or it is not used.
            if !has_size(&ready.image, size_mib) {
                tracing::warn!(path = %ready.image.display(), size_mib, "pool image has the wrong size, discarding it");
                ready.discard();
                continue;
            }
            let t = std::time::Instant::now();
            if let Err(e) = std::fs::rename(&ready.image, dest) {
                tracing::warn!(path = %ready.image.display(), error = %e, "taking a pool image failed");
                ready.discard();
                continue;
            }
            let Some(mount) = ready.mount else { return Some(false) };
            // The loop device follows the renamed file; its mount moves as a whole.
            let moved = match mount_at {
                Some(to) => disk::move_mount(&mount, to)
                    .inspect_err(|e| tracing::warn!(error = %cove_types::error::chain(e), "moving a pre-mounted pool disk failed; mounting it again"))
                    .is_ok(),
                None => false,
            };
            if !moved {
                let _ = disk::unmount(&mount);
            }
            let _ = std::fs::remove_dir(&mount);
            tracing::debug!(moved, us = t.elapsed().as_micros() as u64, "pool disk taken");
            return Some(moved);
        }
    }

    /// Starts pre-mounting (from the next refill on): a sandbox create asked for a disk.
    pub(crate) fn want_premount(&self) {
        let _ = self.premount.compare_exchange(PREMOUNT_OFF, PREMOUNT_WANTED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether to pre-mount now, making `mnt/` a private mount point the first time.
    fn premounting(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        match self.premount.load(Ordering::Relaxed) {
            PREMOUNT_READY => true,
            PREMOUNT_WANTED => {
                let mnt = self.dir.join(MNT_DIR);
                let next = match disk::private_mount_point(&mnt) {
                    Ok(()) => PREMOUNT_READY,
                    Err(e) => {
                        tracing::info!(error = %cove_types::error::chain(&e), "pool images are not pre-mounted");
                        PREMOUNT_FAILED
                    }
                };
                self.premount.store(next, Ordering::Relaxed);
                next == PREMOUNT_READY
            }
            _ => false,
        }
    }

    /// Whether pre-mounting was asked for and can happen (without making anything).
    fn premount_on(&self) -> bool {
        matches!(self.premount.load(Ordering::Relaxed), PREMOUNT_WANTED | PREMOUNT_READY)
    }

    /// Sets the bytes every new image (pooled or not) must leave free.
    pub(crate) fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Makes new images sparse (see [`crate::RuntimeConfig::sparse_disks`]).
    pub(crate) fn set_sparse(&self, sparse: bool) {
        self.sparse.store(sparse, Ordering::Relaxed);
    }

    /// The bytes every new image must leave free.
    pub(crate) fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// Ready images of `size_mib` (for tests and diagnostics).
    pub(crate) fn ready(&self, size_mib: u64) -> usize {
        self.lock().ready.get(&size_mib).map_or(0, Vec::len)
    }

    /// Starts the background filler unless it runs already (needs a tokio runtime; without
    /// one nothing happens).
    pub(crate) fn refill(self: &Arc<Self>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        {
            let mut st = self.lock();
            let unmounted = self.premount_on() && st.ready.values().flatten().any(|r| r.mount.is_none());
            if st.filling || (self.next_size(&st).is_none() && !unmounted) {
                return;
            }
            st.filling = true;
        }
        let pool = Arc::clone(self);
        handle.spawn(async move { pool.fill().await });
    }

    /// The most recent size with fewer than [`PER_SIZE`] ready images.
    fn next_size(&self, st: &State) -> Option<u64> {
        st.recent.iter().copied().find(|s| st.ready.get(s).map_or(0, Vec::len) < PER_SIZE)
    }

    /// Makes images one at a time until every recent size has [`PER_SIZE`]; stops at the
    /// first failure (the next `refill` tries again).
    async fn fill(&self) {
        // The create that took an image is still finishing (its agent starting, the caller's
        // first command on the way): let that have the CPU first.
        tokio::time::sleep(REFILL_DELAY).await;
        self.mount_adopted().await;
        loop {
            let size = {
                let mut st = self.lock();
                match self.next_size(&st) {
                    Some(s) if !self.closed.load(Ordering::Relaxed) => s,
                    _ => {
                        st.filling = false;
                        return;
                    }
                }
            };
            let tmp = self.dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
            let t = std::time::Instant::now();
            // Room for one more disk of this size stays: a pool image never makes a create fail.
            let sparse = self.sparse.load(Ordering::Relaxed);
            let keep_free = if sparse { self.reserve() } else { self.reserve().saturating_add(size << 20) };
            if let Err(e) = disk::create_image_in_background(&tmp, size, keep_free, sparse).await {
                if matches!(e, disk::DiskError::NoSpace { .. }) {
                    tracing::info!(error = %e, size_mib = size, "not pre-making a disk image: the data filesystem is short of space");
                } else {
                    tracing::warn!(error = %cove_types::error::chain(&e), size_mib = size, "pre-formatting a disk image failed");
                }
                let _ = std::fs::remove_file(&tmp);
                self.lock().filling = false;
                return;
            }
            let stem = format!("{size}-{}", uuid::Uuid::new_v4());
            let done = self.dir.join(format!("{stem}{SUFFIX}"));
            if let Err(e) = std::fs::rename(&tmp, &done) {
                tracing::warn!(error = %e, "finishing a pool image failed");
                let _ = std::fs::remove_file(&tmp);
                self.lock().filling = false;
                return;
            }
            let mkfs_ms = t.elapsed().as_millis() as u64;
            let mut ready = Ready { image: done, mount: None };
            if self.premounting() {
                self.premount(&mut ready).await;
            }
            let mut st = self.lock();
            if st.recent.contains(&size) && !self.closed.load(Ordering::Relaxed) {
                tracing::debug!(size_mib = size, mkfs_ms, mounted = ready.mount.is_some(), "pool image ready");
                st.ready.entry(size).or_default().push(ready);
            } else {
                drop(st);
                ready.discard();
            }
        }
    }

    /// Pre-mounts the images adopted at startup (one at a time; a create may take one
    /// meanwhile, unmounted).
    async fn mount_adopted(&self) {
        while self.premounting() {
            let next = {
                let mut st = self.lock();
                st.ready.iter_mut().find_map(|(size, v)| {
                    let i = v.iter().position(|r| r.mount.is_none())?;
                    Some((*size, v.swap_remove(i)))
                })
            };
            let Some((size, mut ready)) = next else { return };
            if !self.premount(&mut ready).await {
                self.premount.store(PREMOUNT_FAILED, Ordering::Relaxed);
            }
            self.lock().ready.entry(size).or_default().push(ready);
        }
    }

    /// Mounts `ready` at `mnt/<its stem>`; on failure undoes the attempt and leaves it
    /// unmounted (`false`).
    async fn premount(&self, ready: &mut Ready) -> bool {
        let Some(stem) = ready.image.file_stem() else { return false };
        let at = self.dir.join(MNT_DIR).join(stem);
        match disk::mount_image(&ready.image, &at).await {
            Ok(()) => {
                ready.mount = Some(at);
                true
            }
            Err(e) => {
                tracing::warn!(error = %cove_types::error::chain(&e), "pre-mounting a pool image failed; pooling it unmounted");
                let _ = disk::unmount(&at);
                let _ = std::fs::remove_dir(&at);
                false
            }
        }
    }

    /// Stops the filler after its current image (which it then deletes) and unmounts the
    /// pre-mounted images (kept as plain pool images for the next start) and `mnt/`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut st = self.lock();
        for r in st.ready.values_mut().flatten() {
            if let Some(m) = r.mount.take() {
                let _ = disk::unmount(&m);
                let _ = std::fs::remove_dir(&m);
            }
        }
        drop(st);
        if self.premount.swap(PREMOUNT_OFF, Ordering::Relaxed) == PREMOUNT_READY {
            let _ = disk::unmount(&self.dir.join(MNT_DIR));
        }
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Unmounts what a previous server left pre-mounted under `mnt` (and `mnt` itself).
fn unmount_stale(mnt: &Path) {
    if let Ok(entries) = std::fs::read_dir(mnt) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = disk::unmount(&p);
            let _ = std::fs::remove_dir(&p);
        }
    }
    let _ = disk::unmount(mnt);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_image_names_carry_a_size() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(parse_name(&format!("3072-{id}.img")), Some(3072));
        for bad in [format!("tmp-{id}"), format!("3072-{id}"), format!("0-{id}.img"), "3072-x.img".into()] {
            assert_eq!(parse_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn open_removes_half_written_and_mis_sized_files_and_adopts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, len: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(len).unwrap();
        };
        let (a, b, c) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        write(&format!("tmp-{a}"), 8 << 20);
        write(&format!("8-{b}.img"), 8 << 20);
        write(&format!("9-{c}.img"), 8 << 20);
        write("junk", 1);
        let pool = DiskPool::open(dir.path().to_path_buf()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n != MNT_DIR)
            .collect();
        left.sort();
        assert_eq!(left, vec![format!("8-{b}.img")]);
        assert_eq!(pool.ready(8), 1);
        assert_eq!(pool.ready(9), 0);

        // Only the exact size is handed out, and a file that shrank behind our back is not.
        let dest = dir.path().join("disk.img");
        assert!(!pool.take(9, &dest));
        std::fs::File::options().write(true).open(dir.path().join(format!("8-{b}.img"))).unwrap().set_len(1).unwrap();
        assert!(!pool.take(8, &dest));
        assert!(!dest.exists());
        pool.close();
    }

    #[test]
    fn old_sizes_are_evicted_with_their_images() {
        let dir = tempfile::tempdir().unwrap();
        let pool = DiskPool::open(dir.path().to_path_buf()).unwrap();
        let img = dir.path().join(format!("8-{}.img", uuid::Uuid::new_v4()));
        std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
        pool.note_size(8);
        pool.lock().ready.entry(8).or_default().push(Ready { image: img.clone(), mount: None });
        for s in 9..9 + MAX_SIZES as u64 {
            pool.note_size(s);
        }
        assert_eq!(pool.ready(8), 0);
        assert!(!img.exists());
        assert_eq!(pool.lock().recent.len(), MAX_SIZES);
        pool.close();
    }

    /// Waits until the filler made [`PER_SIZE`] images of `size`, all pre-mounted.
    async fn filled(pool: &Arc<DiskPool>, size: u64) {
        pool.want_premount();
        pool.note_size(size);
        pool.refill();
        for _ in 0..400 {
            let done = {
                let st = pool.lock();
                let v = st.ready.get(&size);
                !st.filling && v.is_some_and(|v| v.len() == PER_SIZE && v.iter().all(|r| r.mount.is_some()))
            };
            if done {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the pool did not fill");
    }

    /// A pool in a new temporary directory (`<dir>/pool`), where this process may mount.
    fn mounting_pool() -> Option<(tempfile::TempDir, Arc<DiskPool>)> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(DiskPool::open(dir.path().join("pool")).unwrap());
        Some((dir, pool))
    }

    fn mounts_in(dir: &Path) -> Vec<PathBuf> {
        disk::mounts_under(dir).into_iter().filter(|m| m != &dir.join(MNT_DIR)).collect()
    }

    #[tokio::test]
    async fn a_create_takes_a_mounted_disk_whose_mount_moves_with_it_into_the_bundle() {
        let Some((dir, pool)) = mounting_pool() else { return };
        filled(&pool, 8).await;
        let (image, at) = (dir.path().join("disk.img"), dir.path().join("disk"));
        assert_eq!(pool.take_mounted(8, &image, &at), Some(true));
        assert!(disk::is_mountpoint(&at), "the disk is mounted in the bundle");
        assert!(at.join("upper").is_dir() && at.join("work").is_dir());
        // The loop device follows the renamed image: stop and restart find it by its new path.
        let dev = disk::loop_device_of(&std::fs::canonicalize(&image).unwrap()).expect("the image backs a loop device");
        assert!(dev.starts_with("loop"), "{dev}");
        assert_eq!(mounts_in(&dir.path().join("pool")).len(), PER_SIZE - 1, "the other stays in the pool's mnt");
        disk::unmount(&at).unwrap();
        // The image-only take (for build steps) gets an unmounted image.
        let plain = dir.path().join("plain.img");
        assert!(pool.take(8, &plain));
        disk::wait_released(&plain, std::time::Duration::from_secs(5)).await.unwrap();
        pool.close();
        assert_eq!(disk::mounts_under(dir.path()), Vec::<PathBuf>::new());
    }

    #[tokio::test]
    async fn a_pool_no_create_took_a_disk_from_holds_no_mount_and_a_dropped_one_leaves_none() {
        let Some((dir, pool)) = mounting_pool() else { return };
        pool.note_size(8);
        pool.refill();
        for _ in 0..400 {
            if pool.ready(8) == PER_SIZE && !pool.lock().filling {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert_eq!(pool.ready(8), PER_SIZE);
        assert_eq!(disk::mounts_under(dir.path()), Vec::<PathBuf>::new(), "nothing mounted before a create");
        filled(&pool, 8).await;
        assert_eq!(mounts_in(&dir.path().join("pool")).len(), PER_SIZE);
        drop(pool);
        assert_eq!(disk::mounts_under(dir.path()), Vec::<PathBuf>::new(), "a dropped pool unmounts all");
    }

    #[tokio::test]
    async fn mounts_a_killed_server_left_in_the_pool_are_undone_and_their_images_reused() {
        let Some((dir, pool)) = mounting_pool() else { return };
        let pool_dir = dir.path().join("pool");
        filled(&pool, 8).await;
        assert_eq!(mounts_in(&pool_dir).len(), PER_SIZE);
        // Never closed nor dropped: as a killed server leaves it.
        std::mem::forget(pool);
        let pool = Arc::new(DiskPool::open(pool_dir.clone()).unwrap());
        assert_eq!(mounts_in(&pool_dir), Vec::<PathBuf>::new(), "the old mounts are gone");
        assert_eq!(pool.ready(8), PER_SIZE, "their images are adopted");
        filled(&pool, 8).await;
        assert_eq!(mounts_in(&pool_dir).len(), PER_SIZE, "and mounted again");
        pool.close();
        assert_eq!(disk::mounts_under(dir.path()), Vec::<PathBuf>::new());
    }
}
