//! Room kept on the data directory's filesystem for the database. A full disk must not stop
//! tracerd from recording what it does (a session stopped, deleted, failed): the data
//! directory holds a reserve file, allocated at start, that the database's writer deletes when
//! a write fails for want of space, then retries. The reserve is made again once space
//! returns; until then the daemon reports itself degraded.
use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

/// The reserve's size: many thousands of session updates in SQLite's write-ahead log.
const RESERVE_BYTES: u64 = 8 << 20;
/// Below this much free space new sessions are refused.
const LOW_WATER: u64 = 1 << 20;
/// The reserve is made again only when this much is free (so as much stays free after).
const ROOM_TO_RESTORE: u64 = 2 * RESERVE_BYTES;

#[derive(Debug)]
pub struct SpaceReserve {
    path: PathBuf,
    /// Released for want of space and not made again yet.
    released: AtomicBool,
    /// The filesystem cannot hold one (no `fallocate`): never made, never released.
    unsupported: AtomicBool,
}

impl SpaceReserve {
    /// The reserve of the data directory `dir`, allocated now if it is not there yet (a full
    /// disk leaves it released, and the daemon starts all the same).
    pub fn open(dir: &Path) -> Self {
        let reserve = Self {
            path: dir.join("space-reserve"),
            released: AtomicBool::new(false),
            unsupported: AtomicBool::new(false),
        };
        match reserve.allocate() {
            Ok(()) => {}
            Err(err) if is_out_of_space(&err) => {
                tracing::warn!(path = %reserve.path.display(), %err,
                    "the data directory has no room for its space reserve: the disk is full");
                reserve.released.store(true, Ordering::Relaxed);
            }
            // Not a full disk (a filesystem without fallocate, say): run without a reserve.
            Err(err) => {
                tracing::warn!(path = %reserve.path.display(), %err,
                    "no space reserve on this filesystem: on a full disk, stops and deletes may not be saved");
                reserve.unsupported.store(true, Ordering::Relaxed);
            }
        }
        reserve
    }

    /// Deletes the reserve to make room; whether that freed anything.
    pub fn release(&self) -> bool {
        if self.unsupported.load(Ordering::Acquire) || self.released.swap(true, Ordering::AcqRel) {
            return false;
        }
        let freed = fs::remove_file(&self.path).is_ok();
        tracing::warn!(path = %self.path.display(), freed,
            "the data directory is full: its space reserve is released for the database");
        freed
    }

    /// Whether the disk was found full and the reserve is not back yet.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Whether nothing new should be recorded: the reserve is released, or less than
    /// [`LOW_WATER`] is free. Blocking (a statvfs).
    pub fn is_full(&self) -> bool {
        self.is_released() || free_bytes(&self.path).is_ok_and(|free| free < LOW_WATER)
    }

    /// Makes the reserve again if it was released and space has returned. Blocking (a
    /// statvfs, and maybe an allocation).
    pub fn restore_if_room(&self) {
        if !self.is_released() || free_bytes(&self.path).unwrap_or(0) < ROOM_TO_RESTORE {
            return;
        }
        match self.allocate() {
            Ok(()) => {
                self.released.store(false, Ordering::Release);
                tracing::info!(path = %self.path.display(), "space has returned: the reserve is made again");
            }
            Err(err) => tracing::debug!(%err, "the space reserve cannot be made yet"),
        }
    }

    /// Allocates the file's blocks for real (a sparse file would reserve nothing).
    fn allocate(&self) -> io::Result<()> {
        let file = File::create(&self.path)?;
        // SAFETY: fallocate on a descriptor we own, with a valid range.
        let allocated =
            unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, RESERVE_BYTES as libc::off_t) };
        if allocated == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        drop(file);
        let _ = fs::remove_file(&self.path);
        Err(err)
    }
}

/// Free bytes on the filesystem holding `path` (its parent if it does not exist).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let dir = if path.exists() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let name = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: statvfs fills the zeroed struct we own; `name` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(name.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = SpaceReserve::open(dir.path());
        let path = dir.path().join("space-reserve");
        assert_eq!(fs::metadata(&path).unwrap().len(), RESERVE_BYTES);
        assert!(!reserve.is_released());
        assert!(reserve.release());
        assert!(!path.exists() && reserve.is_released());
        assert!(!reserve.release(), "released once");
        reserve.restore_if_room();
        assert!(path.exists() && !reserve.is_released());
    }

    #[test]
    fn out_of_space_errors_are_told_apart() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
