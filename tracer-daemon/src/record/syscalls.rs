//! Syscall numbers as the host architecture has them: names (from the `syscalls` crate's
//! tables) and which syscalls take a path argument.
use std::{collections::HashSet, sync::LazyLock};

use tracer_common::MAX_SYSCALLS;

/// The name of a syscall number on the host architecture, from the `syscalls` crate's tables.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    syscalls::Sysno::new(nr as usize).map(|sysno| sysno.name())
}

/// Syscalls whose argument `index` is a path the kernel reads at entry. Names resolve to
/// numbers through the host architecture's table; names an architecture lacks (aarch64 has
/// no `open`, `stat`, `unlink`…) are skipped.
const PATH_SYSCALLS: &[(&str, usize)] = &[
    ("open", 0),
    ("openat", 1),
    ("openat2", 1),
    ("creat", 0),
    ("execve", 0),
    ("execveat", 1),
    ("stat", 0),
    ("lstat", 0),
    ("newfstatat", 1),
    ("statx", 1),
    ("statfs", 0),
    ("access", 0),
    ("faccessat", 1),
    ("faccessat2", 1),
    ("unlink", 0),
    ("unlinkat", 1),
    ("mkdir", 0),
    ("mkdirat", 1),
    ("rmdir", 0),
    ("rename", 0),
    ("renameat", 1),
    ("renameat2", 1),
    ("link", 0),
    ("linkat", 1),
    ("symlink", 1),
    ("symlinkat", 2),
    ("readlink", 0),
    ("readlinkat", 1),
    ("chdir", 0),
    ("chroot", 0),
    ("chmod", 0),
    ("fchmodat", 1),
    ("fchmodat2", 1),
    ("chown", 0),
    ("lchown", 0),
    ("fchownat", 1),
    ("truncate", 0),
    ("mknod", 0),
    ("mknodat", 1),
    ("utimensat", 1),
    ("umount2", 0),
    ("mount", 1),
    ("swapon", 0),
    ("swapoff", 0),
    ("setxattr", 0),
    ("getxattr", 0),
    ("listxattr", 0),
    ("removexattr", 0),
];

/// (syscall number, path argument index) on this architecture.
pub fn path_arguments() -> impl Iterator<Item = (u32, usize)> {
    PATH_SYSCALLS.iter().filter_map(|&(name, index)| {
        let sysno: syscalls::Sysno = name.parse().ok()?;
        let nr = sysno.id() as u32;
        (nr < MAX_SYSCALLS).then_some((nr, index))
    })
}

/// Syscall numbers that take a path, on this architecture.
pub fn path_syscalls() -> HashSet<u32> {
    path_arguments().map(|(nr, _)| nr).collect()
}

/// The index of syscall `nr`'s path argument, if it takes one.
pub fn path_index(nr: u32) -> Option<usize> {
    static BY_NR: LazyLock<Vec<Option<u8>>> = LazyLock::new(|| {
        let mut by_nr = vec![None; MAX_SYSCALLS as usize];
        for (nr, index) in path_arguments() {
            by_nr[nr as usize] = Some(index as u8);
        }
        by_nr
    });
    BY_NR.get(nr as usize).copied().flatten().map(usize::from)
}
