//! Names for the numbers syscalls take: flag sets, commands, families, signals.
//!
//! Values come from the `libc` crate (the host architecture's own); the names and their
//! order are ours, because no maintained crate maps values back to names: each table lists
//! the constants in the order strace prints them (composite flags before their parts).
use libc::c_int;

/// A flag or value and its name.
pub type Table = &'static [(u64, &'static str)];

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name as u64, stringify!($name))),*]
    };
}

/// `open`/`openat` flags besides the access mode.
pub const OPEN_FLAGS: Table = table![
    O_CREAT,
    O_EXCL,
    O_NOCTTY,
    O_TRUNC,
    O_APPEND,
    O_NONBLOCK,
    O_SYNC,
    O_DSYNC,
    O_ASYNC,
    O_DIRECT,
    O_LARGEFILE,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NOATIME,
    O_CLOEXEC,
    O_PATH,
];
/// `O_TMPFILE` includes `O_DIRECTORY`; it is matched first.
const O_TMPFILE: (u64, &str) = (libc::O_TMPFILE as u64, "O_TMPFILE");

pub const AT_FLAGS: Table = table![
    AT_SYMLINK_NOFOLLOW,
    AT_REMOVEDIR,
    AT_SYMLINK_FOLLOW,
    AT_NO_AUTOMOUNT,
    AT_EMPTY_PATH,
    AT_STATX_FORCE_SYNC,
    AT_STATX_DONT_SYNC,
    AT_RECURSIVE,
];
/// `faccessat2`'s flags: `AT_EACCESS` shares its value with `AT_REMOVEDIR`.
pub const ACCESS_AT_FLAGS: Table = table![AT_SYMLINK_NOFOLLOW, AT_EACCESS, AT_EMPTY_PATH];

pub const PROT_FLAGS: Table = table![
    PROT_READ,
    PROT_WRITE,
    PROT_EXEC,
    PROT_GROWSDOWN,
    PROT_GROWSUP
];

/// `mmap`'s mapping type (the low bits), then its flags.
pub const MAP_TYPES: Table = table![MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE];
pub const MAP_FLAGS: Table = table![
    MAP_FIXED,
    MAP_ANONYMOUS,
    MAP_32BIT,
    MAP_GROWSDOWN,
    MAP_DENYWRITE,
    MAP_EXECUTABLE,
    MAP_LOCKED,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_NONBLOCK,
    MAP_STACK,
    MAP_HUGETLB,
    MAP_SYNC,
    MAP_FIXED_NOREPLACE,
];
const MAP_TYPE_MASK: u64 = 0x0f;

pub const ADDRESS_FAMILIES: Table = table![
    AF_UNSPEC,
    AF_UNIX,
    AF_INET,
    AF_AX25,
    AF_IPX,
    AF_APPLETALK,
    AF_NETROM,
    AF_BRIDGE,
    AF_ATMPVC,
    AF_X25,
    AF_INET6,
    AF_ROSE,
    AF_DECnet,
    AF_NETBEUI,
    AF_SECURITY,
    AF_KEY,
    AF_NETLINK,
    AF_PACKET,
    AF_ASH,
    AF_ECONET,
    AF_ATMSVC,
    AF_RDS,
    AF_SNA,
    AF_IRDA,
    AF_PPPOX,
    AF_WANPIPE,
    AF_LLC,
    AF_IB,
    AF_MPLS,
    AF_CAN,
    AF_TIPC,
    AF_BLUETOOTH,
    AF_IUCV,
    AF_RXRPC,
    AF_ISDN,
    AF_PHONET,
    AF_IEEE802154,
    AF_CAIF,
    AF_ALG,
    AF_NFC,
    AF_VSOCK,
    AF_XDP,
];
pub const SOCKET_TYPES: Table = table![
    SOCK_STREAM,
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_RDM,
    SOCK_SEQPACKET,
    SOCK_DCCP
];
pub const SOCKET_FLAGS: Table = table![SOCK_CLOEXEC, SOCK_NONBLOCK];
const SOCKET_TYPE_MASK: u64 = 0x0f;
pub const IP_PROTOCOLS: Table = table![
    IPPROTO_IP,
    IPPROTO_ICMP,
    IPPROTO_IGMP,
    IPPROTO_IPIP,
    IPPROTO_TCP,
    IPPROTO_EGP,
    IPPROTO_PUP,
    IPPROTO_UDP,
    IPPROTO_IDP,
    IPPROTO_TP,
    IPPROTO_DCCP,
    IPPROTO_IPV6,
    IPPROTO_RSVP,
    IPPROTO_GRE,
    IPPROTO_ESP,
    IPPROTO_AH,
    IPPROTO_ICMPV6,
    IPPROTO_MTP,
    IPPROTO_BEETPH,
    IPPROTO_ENCAP,
    IPPROTO_PIM,
    IPPROTO_COMP,
    IPPROTO_SCTP,
    IPPROTO_UDPLITE,
    IPPROTO_MPLS,
    IPPROTO_RAW,
    IPPROTO_MPTCP,
];

pub const CLONE_FLAGS: Table = table![
    CLONE_VM,
    CLONE_FS,
    CLONE_FILES,
    CLONE_SIGHAND,
    CLONE_PIDFD,
    CLONE_PTRACE,
    CLONE_VFORK,
    CLONE_PARENT,
    CLONE_THREAD,
    CLONE_NEWNS,
    CLONE_SYSVSEM,
    CLONE_SETTLS,
    CLONE_PARENT_SETTID,
    CLONE_CHILD_CLEARTID,
    CLONE_DETACHED,
    CLONE_UNTRACED,
    CLONE_CHILD_SETTID,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
    CLONE_IO,
];

pub const FCNTL_COMMANDS: Table = table![
    F_DUPFD,
    F_GETFD,
    F_SETFD,
    F_GETFL,
    F_SETFL,
    F_GETLK,
    F_SETLK,
    F_SETLKW,
    F_SETOWN,
    F_GETOWN,
    F_OFD_GETLK,
    F_OFD_SETLK,
    F_OFD_SETLKW,
    F_SETLEASE,
    F_GETLEASE,
    F_NOTIFY,
    F_DUPFD_CLOEXEC,
    F_SETPIPE_SZ,
    F_GETPIPE_SZ,
    F_ADD_SEALS,
    F_GET_SEALS,
];
pub const FD_FLAGS: Table = table![FD_CLOEXEC];

/// Common terminal and file ioctl requests (libc names the generic ones; device-specific
/// requests are shown as numbers).
pub const IOCTL_REQUESTS: Table = table![
    TCGETS,
    TCSETS,
    TCSETSW,
    TCSETSF,
    TCGETA,
    TCSETA,
    TCSETAW,
    TCSETAF,
    TCSBRK,
    TCXONC,
    TCFLSH,
    TIOCEXCL,
    TIOCNXCL,
    TIOCSCTTY,
    TIOCGPGRP,
    TIOCSPGRP,
    TIOCOUTQ,
    TIOCSTI,
    TIOCGWINSZ,
    TIOCSWINSZ,
    TIOCMGET,
    TIOCMBIS,
    TIOCMBIC,
    TIOCMSET,
    FIONREAD,
    TIOCLINUX,
    TIOCCONS,
    TIOCGSERIAL,
    TIOCSSERIAL,
    TIOCPKT,
    FIONBIO,
    TIOCNOTTY,
    TIOCSETD,
    TIOCGETD,
    TIOCGSID,
    TIOCGPTN,
    TIOCSPTLCK,
    FIONCLEX,
    FIOCLEX,
    FIOASYNC,
    FIOQSIZE,
];

pub const SIGNALS: Table = table![
    SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGKILL, SIGUSR1, SIGSEGV,
    SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGSTKFLT, SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN,
    SIGTTOU, SIGURG, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGWINCH, SIGIO, SIGPWR, SIGSYS,
];

pub const RESOLVE_FLAGS: Table = table![
    RESOLVE_NO_XDEV,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_CACHED,
];

/// `flags` as `A|B|0x…` from `table` (matched in order, each clearing its bits), or `none`
/// when no bit is set.
pub fn flags(value: u64, table: Table, none: &str) -> String {
    let mut names = Vec::new();
    let mut rest = value;
    for &(bits, name) in table {
        if bits != 0 && rest & bits == bits {
            names.push(name.to_owned());
            rest &= !bits;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if names.is_empty() {
        none.to_owned()
    } else {
        names.join("|")
    }
}

/// The name of `value` in `table`, or the number.
pub fn symbol(value: u64, table: Table) -> String {
    table
        .iter()
        .find(|&&(known, _)| known == value)
        .map_or_else(|| value.to_string(), |&(_, name)| name.to_owned())
}

/// `open` flags: the access mode, then the rest.
pub fn open_flags(value: u64) -> String {
    let mode = match value & libc::O_ACCMODE as u64 {
        0 => "O_RDONLY".to_owned(),
        1 => "O_WRONLY".to_owned(),
        2 => "O_RDWR".to_owned(),
        other => format!("{other:#x}"),
    };
    let mut rest = value & !(libc::O_ACCMODE as u64);
    let mut names = vec![mode];
    // O_TMPFILE contains O_DIRECTORY: matched before the table so it is not split.
    let tmpfile = rest & O_TMPFILE.0 == O_TMPFILE.0;
    if tmpfile {
        rest &= !O_TMPFILE.0;
    }
    if rest != 0 {
        names.push(flags(rest, OPEN_FLAGS, ""));
    }
    if tmpfile {
        names.push(O_TMPFILE.1.to_owned());
    }
    names.join("|")
}

/// Whether `open` flags make the call take a mode.
pub fn open_takes_mode(value: u64) -> bool {
    value & libc::O_CREAT as u64 != 0 || value & O_TMPFILE.0 == O_TMPFILE.0
}

/// `mmap` flags: the mapping type, then the flags.
pub fn map_flags(value: u64) -> String {
    let kind = symbol(value & MAP_TYPE_MASK, MAP_TYPES);
    let rest = value & !MAP_TYPE_MASK;
    if rest == 0 {
        kind
    } else {
        format!("{kind}|{}", flags(rest, MAP_FLAGS, ""))
    }
}

/// A socket type and its flags.
pub fn socket_type(value: u64) -> String {
    let kind = symbol(value & SOCKET_TYPE_MASK, SOCKET_TYPES);
    let rest = value & !SOCKET_TYPE_MASK;
    if rest == 0 {
        kind
    } else {
        format!("{kind}|{}", flags(rest, SOCKET_FLAGS, ""))
    }
}

/// A socket protocol: named for the IP families, a number otherwise (as strace does).
pub fn socket_protocol(family: u64, protocol: u64) -> String {
    if family == libc::AF_INET as u64 || family == libc::AF_INET6 as u64 {
        symbol(protocol, IP_PROTOCOLS)
    } else {
        protocol.to_string()
    }
}

/// `SIGKILL` for 9, `SIGRTMIN+n` for real-time signals, the number otherwise.
pub fn signal(value: u64) -> String {
    let number = value as c_int;
    if number == 0 {
        return "0".to_owned();
    }
    if let Some(&(_, name)) = SIGNALS.iter().find(|&&(known, _)| known == value) {
        return name.to_owned();
    }
    // The kernel's SIGRTMIN is 32 (glibc reserves the first few for itself).
    match number - 32 {
        0 => "SIGRTMIN".to_owned(),
        offset @ 1..=32 => format!("SIGRTMIN+{offset}"),
        _ => number.to_string(),
    }
}

/// `clone` flags, with the exit signal in the low byte.
pub fn clone_flags(value: u64) -> String {
    let exit_signal = value & 0xff;
    let rest = value & !0xff;
    let mut text = flags(rest, CLONE_FLAGS, "");
    if exit_signal != 0 {
        if !text.is_empty() {
            text.push('|');
        }
        text.push_str(&signal(exit_signal));
    }
    if text.is_empty() {
        "0".to_owned()
    } else {
        text
    }
}

/// An octal mode as strace prints it (`0644`, `000`).
pub fn mode(value: u64) -> String {
    format!("0{:02o}", value & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_strace() {
        let cloexec = libc::O_CLOEXEC as u64;
        assert_eq!(open_flags(cloexec), "O_RDONLY|O_CLOEXEC");
        let create = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64;
        assert_eq!(open_flags(create), "O_WRONLY|O_CREAT|O_TRUNC");
        assert!(open_takes_mode(create) && !open_takes_mode(cloexec));
        assert_eq!(flags(3, PROT_FLAGS, "PROT_NONE"), "PROT_READ|PROT_WRITE");
        assert_eq!(flags(0, PROT_FLAGS, "PROT_NONE"), "PROT_NONE");
        let anonymous = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        assert_eq!(map_flags(anonymous), "MAP_PRIVATE|MAP_ANONYMOUS");
        let stream = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
        assert_eq!(socket_type(stream), "SOCK_STREAM|SOCK_CLOEXEC");
        assert_eq!(symbol(2, ADDRESS_FAMILIES), "AF_INET");
        assert_eq!(socket_protocol(2, 0), "IPPROTO_IP");
        assert_eq!(socket_protocol(1, 0), "0");
        assert_eq!(signal(10), "SIGUSR1");
        assert_eq!(signal(34), "SIGRTMIN+2");
        let fork = (libc::CLONE_CHILD_CLEARTID | libc::CLONE_CHILD_SETTID) as u64 | 17;
        assert_eq!(
            clone_flags(fork),
            "CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"
        );
        assert_eq!(mode(0o644), "0644");
        assert_eq!(mode(0), "000");
        assert_eq!(flags(0x1_0000_0000, PROT_FLAGS, ""), "0x100000000");
        assert_eq!(symbol(libc::TCGETS, IOCTL_REQUESTS), "TCGETS");
    }
}
