//! Whether tracerd sees the host as its kernel does. In a container without `--pid=host` it
//! has a PID namespace of its own: the PIDs it reads in `/proc` (a pids target, a container's
//! init process, a launched container's) are not the host's, so such sessions would be
//! wrong. The kernel's records carry host PIDs either way.

/// Why PIDs read here are not the host's, if they are not: `/proc/self/status` lists one
/// `NSpid` per nested PID namespace, one only in the host's.
pub fn own_pid_namespace() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    own_pid_namespace_from(&status)
}

fn own_pid_namespace_from(status: &str) -> Option<String> {
    let pids = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    let levels = pids.split_whitespace().count();
    (levels > 1).then(|| {
        "tracerd runs in a PID namespace of its own, so the PIDs it reads are not the host's: \
         run its container with --pid=host (Kubernetes: hostPID: true)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_pid_namespaces_are_recognised() {
        assert_eq!(
            own_pid_namespace_from("Name:\ttracerd\nNSpid:\t4242\n"),
            None
        );
        let why = own_pid_namespace_from("NSpid:\t4242\t1\n").unwrap();
        assert!(why.contains("--pid=host"), "{why}");
    }
}
