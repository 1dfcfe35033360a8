//! The deterministic syscall workload (workloads/syscall_loop.c), run in or out of a cgroup.
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
};

use crate::cgroup::TestCgroup;

/// Path of the static workload binary built by build.rs.
pub fn path() -> &'static Path {
    Path::new(env!("SYSCALL_LOOP"))
}

/// Syscall number on this host by name, from the same table the daemon uses.
pub fn nr(name: &str) -> u32 {
    let sysno: syscalls::Sysno = name
        .parse()
        .unwrap_or_else(|_| panic!("unknown syscall {name}"));
    sysno.id() as u32
}

/// Runs the workload (e.g. `["getppid", "1000"]`) to completion outside any test cgroup.
pub fn run(args: &[&str]) -> (u32, ExitStatus) {
    let mut child = Command::new(path())
        .args(args)
        .spawn()
        .expect("starting the workload");
    let pid = child.id();
    (pid, child.wait().expect("waiting for the workload"))
}

/// Runs the workload to completion inside `cgroup`. It joins the cgroup between fork and
/// exec, so everything from its `execve` on happens inside.
pub fn run_in(cgroup: &TestCgroup, args: &[&str]) -> (u32, ExitStatus) {
    let mut child = spawn_in(cgroup, args);
    let pid = child.id();
    (pid, child.wait().expect("waiting for the workload"))
}

/// Starts the workload inside `cgroup` with a piped stdin (for `pause-stdin`).
pub fn spawn_in(cgroup: &TestCgroup, args: &[&str]) -> Child {
    let mut command = Command::new(path());
    command.args(args).stdin(Stdio::piped());
    join_before_exec(&mut command, cgroup);
    command
        .spawn()
        .expect("starting the workload in its cgroup")
}

/// Makes `command`'s process join `cgroup` between fork and exec, so everything from its
/// `execve` on happens inside.
pub fn join_before_exec(command: &mut Command, cgroup: &TestCgroup) {
    let procs = std::ffi::CString::new(
        cgroup
            .path()
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("cgroup path has no NUL");
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Lets a workload blocked in `pause-stdin 1` go on, and waits for it.
pub fn resume_and_wait(mut child: Child) -> ExitStatus {
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"x")
        .expect("resuming the workload");
    child.wait().expect("waiting for the workload")
}
