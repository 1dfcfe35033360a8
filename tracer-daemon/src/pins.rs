//! Where the engine pins its per-session kernel counters on bpffs, so the daemon that starts
//! after one died can read them: `/sys/fs/bpf/tracerd/<node>/<instance>/slots`. `<node>`
//! names the data directory (an id kept in it), so daemons with other data directories never
//! touch each other's pins; `<instance>` is new at every start. Without bpffs at
//! `/sys/fs/bpf` nothing is pinned, and counts after a crash are as last saved.
use std::{
    fs,
    path::{Path, PathBuf},
};

use uuid::Uuid;

const BPF_ROOT: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub struct CounterPins {
    node_dir: PathBuf,
    instance_dir: PathBuf,
}

impl CounterPins {
    /// The pins of a daemon starting now on `data_dir`, if bpffs is mounted.
    pub fn for_data_dir(data_dir: &Path) -> Option<Self> {
        if !is_bpffs(Path::new(BPF_ROOT)) {
            tracing::warn!("bpffs is not mounted at {BPF_ROOT}: after a crash, session counts since the last save are estimated");
            return None;
        }
        let node = match node_id(data_dir) {
            Ok(node) => node,
            Err(err) => {
                tracing::warn!(%err, "the data directory's node id cannot be kept: counters are not pinned");
                return None;
            }
        };
        let node_dir = Path::new(BPF_ROOT).join("tracerd").join(node);
        let instance_dir = node_dir.join(Uuid::new_v4().simple().to_string());
        Some(Self {
            node_dir,
            instance_dir,
        })
    }

    /// Where the engine pins the counter map.
    pub fn counters(&self) -> PathBuf {
        self.instance_dir.join("slots")
    }

    /// Removes what earlier daemons on this data directory pinned, once their runs are
    /// settled (`keep`: pinned counters of runs still to settle).
    pub fn remove_stale(&self, keep: &[String]) {
        let Ok(instances) = fs::read_dir(&self.node_dir) else {
            return;
        };
        for instance in instances.flatten() {
            let kept = keep
                .iter()
                .any(|pin| Path::new(pin).parent() == Some(instance.path().as_path()));
            if instance.path() != self.instance_dir && !kept {
                remove_dir(&instance.path());
            }
        }
    }

    /// Removes this daemon's pins (a clean stop: its runs ended and were saved).
    pub fn remove_own(&self) {
        remove_dir(&self.instance_dir);
    }
}

/// Where the daemons on `data_dir` pin, if one ever did (its node id is kept).
pub fn node_dir(data_dir: &Path) -> Option<PathBuf> {
    let id = fs::read_to_string(data_dir.join("node-id")).ok()?;
    Some(Path::new(BPF_ROOT).join("tracerd").join(id.trim()))
}

/// Removes everything the daemons on `data_dir` pinned (a data directory given up for good:
/// no daemon will settle its runs).
pub fn remove_node(data_dir: &Path) {
    let Some(node_dir) = node_dir(data_dir) else {
        return;
    };
    if let Ok(instances) = fs::read_dir(&node_dir) {
        for instance in instances.flatten() {
            remove_dir(&instance.path());
        }
    }
    let _ = fs::remove_dir(&node_dir);
}

/// A pin directory and the pins in it (bpffs removes a map once no pin or descriptor holds
/// it).
fn remove_dir(dir: &Path) {
    if let Ok(pins) = fs::read_dir(dir) {
        for pin in pins.flatten() {
            let _ = fs::remove_file(pin.path());
        }
    }
    if let Err(err) = fs::remove_dir(dir) {
        tracing::debug!(dir = %dir.display(), %err, "a pin directory stays");
    }
}

/// The data directory's node id, made on first use.
fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match fs::read_to_string(&path) {
        Ok(id) if Uuid::parse_str(id.trim()).is_ok() => Ok(id.trim().to_owned()),
        _ => {
            let id = Uuid::new_v4().simple().to_string();
            fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we own; `name` is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(name.as_ptr(), &mut stat) }) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}
