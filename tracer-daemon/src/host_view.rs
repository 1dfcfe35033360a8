//! Whether tracerd sees the host as its kernel does. In a container without `--pid=host` it
//! has a PID namespace of its own: the PIDs it reads in `/proc` (a pids target, a container's
//! init process, a launched container's) are not the host's, so such sessions would be
//! wrong. The kernel's records carry host PIDs either way.

/// Container init shims that are PID 1 only inside a container.
const CONTAINER_INITS: &[&str] = &["docker-init", "tini", "dumb-init", "catatonit", "pause"];

/// Why PIDs read here are not the host's, if they are not.
///
/// A process cannot see its PID namespace's parent from inside, so this goes by what a
/// namespace of its own looks like: tracerd is PID 1 (the container's entry point; on a
/// host PID 1 is the init system), or PID 1 is a container's init shim (`docker run
/// --init`, Kubernetes' pause). `/proc/self/status` also lists one `NSpid` per nested
/// namespace when `/proc` comes from an outer one.
pub fn own_pid_namespace() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    own_pid_namespace_from(std::process::id(), init.trim(), &status)
}

fn own_pid_namespace_from(pid: u32, init: &str, status: &str) -> Option<String> {
    let nested = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .is_some_and(|pids| pids.split_whitespace().count() > 1);
    (pid == 1 || CONTAINER_INITS.contains(&init) || nested).then(|| {
        "tracerd runs in a PID namespace of its own, so the PIDs it reads are not the host's: \
         run its container with --pid=host (Kubernetes: hostPID: true)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_namespace_of_its_own_is_recognised() {
        let host = "Name:\ttracerd\nNSpid:\t4242\n";
        assert_eq!(own_pid_namespace_from(4242, "systemd", host), None);
        assert_eq!(own_pid_namespace_from(4242, "init", host), None);
        let why = own_pid_namespace_from(1, "tracerd", "NSpid:\t1\n").unwrap();
        assert!(why.contains("--pid=host"), "{why}");
        assert!(own_pid_namespace_from(7, "docker-init", "NSpid:\t7\n").is_some());
        assert!(own_pid_namespace_from(4242, "systemd", "NSpid:\t4242\t1\n").is_some());
        // This test runs on the host: not a namespace of its own.
        assert_eq!(own_pid_namespace(), None);
    }
}
