//! Decoding against signatures captured from this kernel (see `signatures::fixtures`).
use syscalls::Sysno;
use tracer_common::{capture_kind, item_flags, SyscallRecord};

use super::*;
use crate::record::{captured::push_item as item, samples, signatures::fixtures};

struct Call {
    record: SyscallRecord,
    data: Vec<u8>,
}

fn call(sysno: Sysno, args: &[u64], ret: i64) -> Call {
    let mut record = samples::record(sysno.id() as u32, 1, 1, 7);
    record.args[..args.len()].copy_from_slice(args);
    record.ret = ret;
    Call {
        record,
        data: Vec::new(),
    }
}

impl Call {
    fn with(mut self, kind: u8, arg: u8, payload: &[u8]) -> Self {
        item(kind, arg, 0, payload, 0, &mut self.data);
        self
    }

    fn decode(&self, limits: &Limits) -> Decoded<'static> {
        static SIGNATURES: std::sync::LazyLock<crate::record::signatures::Signatures> =
            std::sync::LazyLock::new(fixtures::signatures);
        let event = Event::new(&self.record, &self.data);
        decode_with(&event, SIGNATURES.get(self.record.nr), limits)
    }

    fn strace(&self) -> String {
        self.decode(&Limits::default()).strace
    }
}

const AT_FDCWD: u64 = libc::AT_FDCWD as u32 as u64;
const PATH: u64 = 0x7f00_0000_1000;

#[test]
fn openat_reads_like_strace() {
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    let open = call(Sysno::openat, &[AT_FDCWD, PATH, flags, 0x1234], 3).with(
        capture_kind::STRING,
        1,
        b"/etc/hostname",
    );
    assert_eq!(
        open.strace(),
        r#"openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3"#
    );
    let decoded = open.decode(&Limits::default());
    assert_eq!(
        decoded.params,
        [
            ("dfd", Value::Text("AT_FDCWD".into())),
            ("filename", Value::Text("/etc/hostname".into())),
            ("flags", Value::Text("O_RDONLY|O_CLOEXEC".into())),
            ("mode", Value::Text("01064".into())),
        ]
    );
    // Only the registers the call takes.
    assert_eq!(decoded.args, [AT_FDCWD, PATH, flags, 0x1234]);

    let create = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64;
    let missing = call(Sysno::openat, &[AT_FDCWD, PATH, create, 0o644], -2).with(
        capture_kind::STRING,
        1,
        b"/nope/x",
    );
    assert_eq!(
        missing.strace(),
        r#"openat(AT_FDCWD, "/nope/x", O_WRONLY|O_CREAT|O_TRUNC, 0644) = -1 ENOENT (No such file or directory)"#
    );
}

#[test]
fn strings_and_buffers_are_cut_at_the_limits_and_flagged() {
    let long = vec![b'a'; 300];
    let open = call(Sysno::openat, &[AT_FDCWD, PATH, 0, 0], -2).with(
        capture_kind::STRING,
        1,
        &long[..256],
    );
    let decoded = open.decode(&Limits::default());
    assert_eq!(decoded.truncated, ["filename"]);
    assert!(decoded
        .strace
        .contains(&format!("\"{}\"...", "a".repeat(255))));

    let written = b"0123456789012345678901234567890123456789";
    let write = call(Sysno::write, &[1, PATH, 1 << 20], 1 << 20).with(
        capture_kind::DATA_IN,
        1,
        &written[..32],
    );
    assert_eq!(
        write.strace(),
        r#"write(1, "01234567890123456789012345678901"..., 1048576) = 1048576"#
    );
    assert_eq!(write.decode(&Limits::default()).truncated, ["buf"]);
    let narrow = Limits {
        data_bytes: 4,
        ..Limits::default()
    };
    assert!(write.decode(&narrow).strace.contains(r#""0123"..."#));

    assert_eq!(
        call(Sysno::read, &[3, PATH, 32], 0).strace(),
        r#"read(3, "", 32) = 0"#,
        "end of file"
    );
    let read = call(Sysno::read, &[3, PATH, 32], 6).with(capture_kind::DATA_OUT, 1, b"hello\n");
    assert_eq!(read.strace(), r#"read(3, "hello\n", 32) = 6"#);
    assert!(read.decode(&Limits::default()).truncated.is_empty());
}

#[test]
fn a_failed_read_shows_its_pointer_and_missing_data_is_flagged() {
    let failed = call(Sysno::read, &[99, PATH, 32], -9);
    assert_eq!(
        failed.strace(),
        "read(99, 0x7f0000001000, 32) = -1 EBADF (Bad file descriptor)"
    );
    assert!(failed.decode(&Limits::default()).unavailable.is_empty());
    // A path the backend could not read: its pointer, listed as unavailable.
    let open = call(Sysno::openat, &[AT_FDCWD, PATH, 0, 0], 3);
    let decoded = open.decode(&Limits::default());
    assert_eq!(decoded.unavailable, ["filename"]);
    assert_eq!(
        decoded.strace,
        "openat(AT_FDCWD, 0x7f0000001000, O_RDONLY) = 3"
    );
}

#[test]
fn sockets_and_addresses() {
    let stream = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
    assert_eq!(
        call(Sysno::socket, &[2, stream, 0], 3).strace(),
        "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3"
    );
    let mut inet = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
    inet.extend_from_slice(&[0; 8]);
    let connect = call(Sysno::connect, &[3, PATH, 16], -111).with(capture_kind::RAW_IN, 1, &inet);
    assert_eq!(
        connect.strace(),
        r#"connect(3, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused)"#
    );
    let mut unix = vec![1, 0];
    unix.extend_from_slice(b"/tmp/t.sock\0");
    let bind = call(Sysno::bind, &[4, PATH, 110], 0).with(capture_kind::RAW_IN, 1, &unix);
    assert_eq!(
        bind.strace(),
        r#"bind(4, {sa_family=AF_UNIX, sun_path="/tmp/t.sock"}, 110) = 0"#
    );
}

#[test]
fn execve_argv_and_environment() {
    let mut exec = call(Sysno::execve, &[PATH, PATH + 8, 0x7ffd_0000], 0)
        .with(capture_kind::STRING, 0, b"/bin/echo")
        .with(capture_kind::ARGV_ITEM, 1, b"echo")
        .with(capture_kind::ARGV_ITEM, 1, b"hi there");
    item(capture_kind::ARGV_END, 1, 0, b"", 2, &mut exec.data);
    item(capture_kind::ENVC, 2, 0, b"", 5, &mut exec.data);
    assert_eq!(
        exec.strace(),
        r#"execve("/bin/echo", ["echo", "hi there"], 0x7ffd0000 /* 5 vars */) = 0"#
    );
    let mut many = call(Sysno::execve, &[PATH, PATH + 8, 0x7ffd_0000], 0)
        .with(capture_kind::STRING, 0, b"/bin/echo")
        .with(capture_kind::ARGV_ITEM, 1, b"a")
        .with(capture_kind::ARGV_ITEM, 1, b"b");
    item(
        capture_kind::ARGV_END,
        1,
        item_flags::TRUNCATED,
        b"",
        2,
        &mut many.data,
    );
    let decoded = many.decode(&Limits::default());
    assert!(
        decoded.strace.contains(r#"["a", "b", ...]"#),
        "{}",
        decoded.strace
    );
    assert_eq!(decoded.truncated, ["argv"]);
    assert_eq!(
        decoded.params[1],
        ("argv", Value::List(vec!["a".into(), "b".into()]))
    );
}

#[test]
fn memory_signals_clone_fcntl_ioctl() {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anonymous = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let minus_one = u64::from(u32::MAX);
    assert_eq!(
        call(
            Sysno::mmap,
            &[0, 4096, rw, anonymous, minus_one, 0],
            0x7f12_3456_7000
        )
        .strace(),
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f1234567000"
    );
    assert_eq!(
        call(Sysno::mprotect, &[0x7f12_3456_7000, 4096, 1], 0).strace(),
        "mprotect(0x7f1234567000, 4096, PROT_READ) = 0"
    );
    assert_eq!(
        call(Sysno::kill, &[1234, 10], 0).strace(),
        "kill(1234, SIGUSR1) = 0"
    );
    let flags = (libc::CLONE_CHILD_CLEARTID | libc::CLONE_CHILD_SETTID) as u64 | 17;
    let clone = call(Sysno::clone, &[flags, 0, 0, PATH, 0], 42).decode(&Limits::default());
    assert_eq!(
        clone.params[0],
        (
            "clone_flags",
            Value::Text("CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD".into())
        )
    );
    assert_eq!(
        call(Sysno::fcntl, &[3, libc::F_GETFL as u64, 0], 2).strace(),
        "fcntl(3, F_GETFL) = 2"
    );
    assert_eq!(
        call(Sysno::fcntl, &[3, libc::F_SETFD as u64, 1], 0).strace(),
        "fcntl(3, F_SETFD, FD_CLOEXEC) = 0"
    );
    assert_eq!(
        call(Sysno::ioctl, &[1, libc::TCGETS, PATH], -25).strace(),
        "ioctl(1, TCGETS, 0x7f0000001000) = -1 ENOTTY (Inappropriate ioctl for device)"
    );
    assert_eq!(
        call(Sysno::exit_group, &[0], 0).strace(),
        "exit_group(0) = ?"
    );
}

#[test]
fn openat2_how_is_decoded() {
    let mut how = Vec::new();
    for field in [(libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0] {
        how.extend_from_slice(&field.to_ne_bytes());
    }
    let open = call(Sysno::openat2, &[AT_FDCWD, PATH, PATH + 64, 24], 3)
        .with(capture_kind::STRING, 1, b"/etc/hostname")
        .with(capture_kind::RAW_IN, 2, &how);
    assert_eq!(
        open.strace(),
        r#"openat2(AT_FDCWD, "/etc/hostname", {flags=O_RDONLY|O_CLOEXEC, resolve=0}, 24) = 3"#
    );
}
