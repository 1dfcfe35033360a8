//! The tracing filesystem: where it is mounted, and tracefs instances (independent ring
//! buffers with their own event settings) that tracerd creates and removes.
use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

/// Every instance tracerd creates is named with this prefix, so the ones a crashed daemon
/// left behind can be found and removed at start-up.
pub const INSTANCE_PREFIX: &str = "tracerd-";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (looked in /proc/self/mountinfo, /sys/kernel/tracing and \
         /sys/kernel/debug/tracing); mount it with `mount -t tracefs nodev /sys/kernel/tracing` \
         (in a container, add -v /sys/kernel/tracing:/sys/kernel/tracing)"
    )]
    NotMounted,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl TracefsError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Where tracefs is mounted.
pub fn root() -> Result<PathBuf, TracefsError> {
    if let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") {
        let mounted = mountinfo.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "tracefs").then(|| PathBuf::from(mount_point))
        });
        if let Some(root) = mounted.filter(|root| root.join("instances").is_dir()) {
            return Ok(root);
        }
    }
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("instances").is_dir())
        .ok_or(TracefsError::NotMounted)
}

/// Removes every `tracerd-*` instance under `root` that nobody reads (left by a daemon that
/// died), returning their names.
pub fn remove_stale_instances(root: &Path) -> Result<Vec<String>, TracefsError> {
    let dir = root.join("instances");
    let entries = fs::read_dir(&dir).map_err(|err| TracefsError::io("listing", &dir, err))?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(INSTANCE_PREFIX) {
            // An instance whose buffers someone still reads (another tracerd on this host)
            // refuses removal (EBUSY): it is not stale, leave it.
            match fs::remove_dir(entry.path()) {
                Ok(()) => removed.push(name),
                Err(err) => {
                    tracing::warn!(instance = %name, %err, "a tracerd-* tracefs instance is in use; left as it is");
                }
            }
        }
    }
    Ok(removed)
}

/// A tracefs instance: created on [`Instance::create`], removed when dropped.
#[derive(Debug)]
pub struct Instance {
    path: PathBuf,
}

impl Instance {
    pub fn create(root: &Path, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("instances").join(name);
        fs::create_dir(&path).map_err(|err| TracefsError::io("creating", &path, err))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` to a file of the instance, replacing what it held.
    pub fn write(&self, file: &str, value: &str) -> Result<(), TracefsError> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(|err| TracefsError::io("writing", &path, err))
    }

    /// Appends `value` to a file of the instance (`set_event_pid` keeps what it held).
    pub fn append(&self, file: &str, value: &str) -> Result<(), TracefsError> {
        let path = self.path.join(file);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut out| out.write_all(value.as_bytes()))
            .map_err(|err| TracefsError::io("appending to", &path, err))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Stop writing first: removal fails while a reader still has a buffer open, and the
        // instance must not keep recording until then.
        let _ = fs::write(self.path.join("tracing_on"), "0");
        if let Err(err) = fs::remove_dir(&self.path) {
            tracing::error!(instance = %self.path.display(), %err, "removing the tracefs instance failed");
        }
    }
}
