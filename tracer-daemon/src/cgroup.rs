//! cgroup v2 discovery through /proc: where the cgroup2 hierarchy is mounted, which cgroup a
//! process is in, and a cgroup's id (what `bpf_get_current_cgroup_id()` returns in the kernel).
//!
//! Nothing here guesses a layout: hosts differ (pure v2 at `/sys/fs/cgroup`, hybrid with v2 at
//! `/sys/fs/cgroup/unified`, container runtimes with their own naming), so every path is read
//! from `/proc/self/mountinfo` and `/proc/PID/cgroup`.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo; in a container, \
         add -v /sys/fs/cgroup:/sys/fs/cgroup)"
    )]
    NoCgroup2Mount,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not inside the cgroup2 hierarchy mounted at {mount}")]
    OutsideHierarchy { path: PathBuf, mount: PathBuf },
    #[error("process {pid} has no cgroup v2 membership (no `0::` line in /proc/{pid}/cgroup)")]
    NoUnifiedMembership { pid: u32 },
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The mount point of the cgroup2 hierarchy, from `/proc/self/mountinfo`. Looked up once:
/// a host does not move its cgroup2 mount under a running daemon, and every session start
/// needs it.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    static MOUNT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(mount) = MOUNT.get() {
        return Ok(mount.clone());
    }
    let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
    let mount = find_cgroup2_mount(&mountinfo).ok_or(CgroupError::NoCgroup2Mount)?;
    Ok(MOUNT.get_or_init(|| mount).clone())
}

/// Finds the cgroup directory whose id (inode number) is `id`, searching the hierarchy at
/// `mount` breadth-first (container cgroups sit near the top; hierarchies hold hundreds of
/// directories, not millions).
pub fn find_by_id(mount: &Path, id: u64) -> Option<PathBuf> {
    Subtree::new(mount)
        .find(|cgroup| cgroup.id == id)
        .map(|cgroup| cgroup.path)
}

/// The cgroup at `root` and every cgroup below it, breadth-first. Directories that vanish or
/// cannot be read on the way are skipped (cgroups come and go while it walks).
pub struct Subtree {
    queue: std::collections::VecDeque<PathBuf>,
}

impl Subtree {
    pub fn new(root: &Path) -> Self {
        Self {
            queue: std::collections::VecDeque::from([root.to_owned()]),
        }
    }
}

impl Iterator for Subtree {
    type Item = Cgroup;

    fn next(&mut self) -> Option<Cgroup> {
        while let Some(dir) = self.queue.pop_front() {
            let Ok(metadata) = fs::metadata(&dir) else {
                continue;
            };
            if let Ok(entries) = fs::read_dir(&dir) {
                self.queue.extend(
                    entries
                        .flatten()
                        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                        .map(|entry| entry.path()),
                );
            }
            return Some(Cgroup {
                path: dir,
                id: metadata.ino(),
            });
        }
        None
    }
}

/// Every mounted cgroup hierarchy, v1 and v2 (a hybrid host has both), from
/// `/proc/self/mountinfo`; empty if it cannot be read.
pub fn hierarchy_mounts() -> Vec<PathBuf> {
    let Ok(mountinfo) = read(Path::new("/proc/self/mountinfo")) else {
        return Vec::new();
    };
    cgroup_mounts(&mountinfo)
        .filter(|(fstype, _)| matches!(*fstype, "cgroup" | "cgroup2"))
        .map(|(_, mount)| mount)
        .collect()
}

fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    cgroup_mounts(mountinfo).find_map(|(fstype, mount)| (fstype == "cgroup2").then_some(mount))
}

/// Parses mountinfo text (proc(5)): `id parent major:minor root mount-point options
/// [optional fields…] - fstype source super-options`; each mount's type and mount point.
fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (&str, PathBuf)> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        Some((fstype, PathBuf::from(unescape_mountinfo(mount_point))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A cgroup in the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Absolute path in the filesystem, under the cgroup2 mount.
    pub path: PathBuf,
    /// The kernel's cgroup id: the inode number of the cgroup's directory.
    pub id: u64,
}

impl Cgroup {
    /// The cgroup at an absolute filesystem path, which must be under the cgroup2 mount.
    pub fn from_path(path: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        if !path.starts_with(&mount) {
            return Err(CgroupError::OutsideHierarchy {
                path: path.to_owned(),
                mount,
            });
        }
        let metadata = fs::metadata(path).map_err(|source| CgroupError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            id: metadata.ino(),
        })
    }

    /// The cgroup process `pid` is in now.
    pub fn of_pid(pid: u32) -> Result<Self, CgroupError> {
        let membership = read(&PathBuf::from(format!("/proc/{pid}/cgroup")))?;
        let relative = unified_path(&membership).ok_or(CgroupError::NoUnifiedMembership { pid })?;
        let mount = cgroup2_mount()?;
        Self::from_path(&mount.join(relative.trim_start_matches('/')))
    }
}

/// The cgroup v2 path of a `/proc/PID/cgroup` text: its `0::PATH` line.
fn unified_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| line.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    const PURE_V2: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_on_a_pure_v2_host() {
        assert_eq!(
            find_cgroup2_mount(PURE_V2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let v1_only = "35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2_mount(v1_only), None);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo(r"/odd\x"), r"/odd\x");
    }

    #[test]
    fn picks_the_unified_line_of_proc_pid_cgroup() {
        let membership = "12:pids:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n";
        assert_eq!(unified_path(membership), Some("/docker/abc"));
        assert_eq!(unified_path("1:cpu:/\n"), None);
    }

    #[test]
    fn this_process_has_a_cgroup_with_an_id() {
        // Every Linux process since 4.5 with cgroup2 mounted anywhere has a `0::` line.
        let own = Cgroup::of_pid(std::process::id()).expect("own cgroup");
        assert!(own.id > 0);
        assert!(own.path.starts_with(cgroup2_mount().unwrap()));
    }
}
