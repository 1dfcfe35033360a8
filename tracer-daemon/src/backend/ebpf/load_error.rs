//! Why the eBPF backend did not load, in words an operator can act on.
use std::io;

use aya::programs::ProgramError;

/// The oldest kernel with everything the programs use: task storage and
/// `bpf_get_current_task_btf` (5.11; they also need the kernel's BTF), BPF ring buffers in a
/// map-of-maps (5.8-era), raw tracepoints (4.17), `bpf_get_current_cgroup_id` (4.18).
const MIN_KERNEL: (u32, u32) = (5, 11);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the kernel refused to load eBPF programs (permission denied){hint}: run tracerd as root, \
         or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE"
    )]
    NotPermitted { hint: String },
    #[error("this kernel has no bpf() syscall (it was built without CONFIG_BPF_SYSCALL)")]
    BpfUnavailable,
    #[error(
        "kernel {release} is too old: the eBPF backend needs Linux {}.{} or newer",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld { release: String },
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to raw tracepoint {tracepoint} failed: {source}")]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the eBPF object has no {0}: tracer-ebpf and tracer-daemon are out of step")]
    Missing(&'static str),
    #[error("setting up map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("listing CPUs: {0}")]
    Cpus(String),
}

/// Fails early, with a message an operator can act on, on kernels older than `MIN_KERNEL`.
pub(super) fn check_kernel_release() -> Result<(), LoadError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    match parse_release(&release) {
        Some(version) if version < MIN_KERNEL => Err(LoadError::KernelTooOld { release }),
        // An unparseable release is left to the loader to judge.
        _ => Ok(()),
    }
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Turns the errno at the bottom of an aya error into the operator-facing cause, when it is
/// one of the well-known ones.
pub(super) fn classify(err: &(dyn std::error::Error + 'static)) -> Option<LoadError> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(io_error) = err.downcast_ref::<io::Error>() {
            return match io_error.raw_os_error()? {
                libc::EPERM | libc::EACCES => Some(LoadError::NotPermitted {
                    hint: lockdown_hint(),
                }),
                libc::ENOSYS => Some(LoadError::BpfUnavailable),
                _ => None,
            };
        }
        source = err.source();
    }
    None
}

/// Kernel lockdown refuses some BPF helpers even to root; say so when it is on.
fn lockdown_hint() -> String {
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    match lockdown
        .split_whitespace()
        .find(|mode| mode.starts_with('['))
    {
        Some(mode) if mode != "[none]" => format!(" (kernel lockdown is {mode})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.10.0").unwrap() < MIN_KERNEL);
        assert!(parse_release("5.11.0").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn classifies_permission_and_missing_syscall_errors() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(
            classify(&eperm),
            Some(LoadError::NotPermitted { .. })
        ));
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(matches!(classify(&enosys), Some(LoadError::BpfUnavailable)));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(classify(&einval).is_none());
    }
}
