//! Events as an engineer reads them: each argument named (from the kernel's own signature,
//! see [`super::signatures`]) and decoded — flags, symbols, strings, buffers, socket
//! addresses, argv — and the whole call as strace prints it.
//!
//! Nothing is guessed: an argument whose data lives in user memory and was not captured
//! (capture off, the ftrace backend, storage lost) is shown as its pointer and listed as
//! unavailable; one that was cut is listed as truncated.
mod quote;
mod sockaddr;
mod symbols;

use serde::Serialize;
use tracer_common::capture_kind;

use super::{
    captured::{Bytes, Captured},
    signatures::{Param, Signature},
    Event,
};

pub use self::quote::quoted;

/// How much of each kind of data a session shows (its `capture` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Characters of a string argument (a path, a name).
    pub string_chars: usize,
    /// Bytes of a buffer, and characters of each argv element (strace's `-s`).
    pub data_bytes: usize,
    /// argv elements.
    pub argv: usize,
}

impl Default for Limits {
    /// strace's defaults (`-s 32`), and whole paths up to what the kernel keeps.
    fn default() -> Self {
        Self {
            string_chars: tracer_common::PATH_MAX_LEN - 1,
            data_bytes: 32,
            argv: 32,
        }
    }
}

/// A decoded argument: numbers stay numbers; symbols, flags, strings and addresses are text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Text(String),
    List(Vec<String>),
}

/// One event, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Every argument the syscall takes, by the kernel's name for it, in order.
    pub params: Vec<(&'a str, Value)>,
    /// The raw registers of the arguments the syscall takes (all six when unknown).
    pub args: Vec<u64>,
    /// The call as strace prints it.
    pub strace: String,
    /// Arguments whose data was longer than what was kept.
    pub truncated: Vec<&'a str>,
    /// Arguments whose data in user memory was not captured (shown as their pointer).
    pub unavailable: Vec<&'a str>,
}

/// Decodes `event` with the signatures this process read from the kernel.
pub fn decode(event: &Event, limits: &Limits) -> Decoded<'static> {
    let nr = event.record.nr;
    decode_with(event, super::signatures::signatures().get(nr), limits)
}

/// Decodes `event` given its syscall's signature (`None`: unknown, registers shown raw).
pub fn decode_with<'a>(
    event: &Event,
    signature: Option<&'a Signature>,
    limits: &Limits,
) -> Decoded<'a> {
    let record = &event.record;
    let name = super::syscalls::syscall_name(record.nr).unwrap_or("syscall");
    let Some(signature) = signature else {
        let args: Vec<String> = record.args.iter().map(|a| format!("{a:#x}")).collect();
        return Decoded {
            args: record.args.to_vec(),
            strace: format!(
                "{name}({}) = {}",
                args.join(", "),
                ret_text(name, record.ret)
            ),
            ..Decoded::default()
        };
    };
    let call = Call {
        name: signature.name,
        signature,
        args: record.args,
        ret: record.ret,
        captured: Captured::parse(&event.data),
        limits,
    };
    let mut decoded = Decoded {
        args: record.args[..signature.params.len().min(6)].to_vec(),
        ..Decoded::default()
    };
    let mut texts = Vec::with_capacity(signature.params.len());
    for (index, param) in signature.params.iter().enumerate().take(6) {
        let piece = call.arg(index, param);
        if piece.truncated {
            decoded.truncated.push(param.name.as_str());
        }
        if piece.unavailable {
            decoded.unavailable.push(param.name.as_str());
        }
        if !piece.hidden {
            texts.push(piece.text);
        }
        decoded.params.push((param.name.as_str(), piece.value));
    }
    decoded.strace = format!(
        "{}({}) = {}",
        signature.name,
        texts.join(", "),
        ret_text(signature.name, record.ret)
    );
    decoded
}

/// The return value as strace prints it.
pub fn ret_text(syscall: &str, ret: i64) -> String {
    if matches!(syscall, "exit" | "exit_group") {
        return "?".to_owned();
    }
    if (-4095..0).contains(&ret) {
        return errno_text(-ret as i32);
    }
    if matches!(syscall, "mmap" | "mremap" | "brk" | "shmat") {
        return format!("{ret:#x}");
    }
    ret.to_string()
}

/// `-1 ENOENT (No such file or directory)`.
fn errno_text(errno: i32) -> String {
    // The kernel's restart codes never reach a program, so libc has no names for them;
    // strace shows them as the kernel names them.
    let restart = match errno {
        512 => Some(("ERESTARTSYS", "To be restarted if SA_RESTART is set")),
        513 => Some(("ERESTARTNOINTR", "To be restarted")),
        514 => Some(("ERESTARTNOHAND", "To be restarted if no handler")),
        516 => Some(("ERESTART_RESTARTBLOCK", "Interrupted by signal")),
        _ => None,
    };
    if let Some((name, text)) = restart {
        return format!("? {name} ({text})");
    }
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("-1 {errno}"),
        // The C library's text (strerror), which is what strace prints.
        known => {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            format!("-1 {known:?} ({text})")
        }
    }
}

/// One argument, decoded.
struct Piece {
    text: String,
    value: Value,
    truncated: bool,
    unavailable: bool,
    /// Left out of the strace text (strace omits it: `openat`'s mode without `O_CREAT`).
    hidden: bool,
}

impl Piece {
    fn text(text: String) -> Self {
        Self {
            value: Value::Text(text.clone()),
            text,
            truncated: false,
            unavailable: false,
            hidden: false,
        }
    }

    fn int(value: i64) -> Self {
        Self {
            text: value.to_string(),
            value: Value::Int(value),
            truncated: false,
            unavailable: false,
            hidden: false,
        }
    }

    fn uint(value: u64) -> Self {
        Self {
            text: value.to_string(),
            value: Value::UInt(value),
            truncated: false,
            unavailable: false,
            hidden: false,
        }
    }

    fn pointer(value: u64) -> Self {
        Self::text(pointer(value))
    }
}

fn pointer(value: u64) -> String {
    if value == 0 {
        "NULL".to_owned()
    } else {
        format!("{value:#x}")
    }
}

/// Syscalls whose `flag`/`flags` argument takes `AT_*` flags.
const AT_FLAG_SYSCALLS: &[&str] = &[
    "newfstatat",
    "fstatat64",
    "statx",
    "unlinkat",
    "fchownat",
    "linkat",
    "utimensat",
    "fchmodat2",
    "execveat",
    "name_to_handle_at",
];

/// Syscalls whose `sig` argument is a signal number.
const SIGNAL_SYSCALLS: &[&str] = &[
    "kill",
    "tkill",
    "tgkill",
    "rt_sigaction",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_send_signal",
];

/// Names of `unsigned long` arguments that are addresses.
const ADDRESS_NAMES: &[&str] = &["addr", "start", "brk", "new_addr", "shmaddr"];

struct Call<'a> {
    name: &'static str,
    signature: &'a Signature,
    args: [u64; 6],
    ret: i64,
    captured: Captured<'a>,
    limits: &'a Limits,
}

impl Call<'_> {
    fn arg(&self, index: usize, param: &Param) -> Piece {
        let raw = self.args[index];
        if let Some(piece) = self.captured_arg(index, param) {
            return piece;
        }
        if self.ret == 0 && self.has_op(index, capture_kind::DATA_OUT) {
            // Nothing was read into the buffer: strace shows it empty.
            return Piece::text("\"\"".to_owned());
        }
        if let Some(piece) = self.symbolic(index, param, raw) {
            return piece;
        }
        if param.is_pointer() {
            let mut piece = Piece::pointer(raw);
            // Captured data would have been decoded above.
            piece.unavailable = raw != 0 && self.expects_data(index);
            return piece;
        }
        if ADDRESS_NAMES.contains(&param.name.as_str()) {
            return Piece::pointer(raw);
        }
        integer(&param.type_name, &param.name, raw)
    }

    fn has_op(&self, index: usize, kind: u8) -> bool {
        let plan = self.signature.capture_plan();
        plan.ops
            .iter()
            .any(|op| op.kind == kind && op.arg as usize == index)
    }

    /// Whether the kernel would read data for argument `index` of this call when capturing
    /// (what a syscall hands back only when it succeeded).
    fn expects_data(&self, index: usize) -> bool {
        self.signature.capture_plan().ops.iter().any(|op| {
            op.arg as usize == index
                && match op.kind {
                    capture_kind::NONE => false,
                    capture_kind::DATA_OUT => self.ret > 0,
                    capture_kind::RAW_OUT => self.ret >= 0,
                    _ => true,
                }
        })
    }

    /// The argument from what the kernel captured, if it captured anything for it.
    fn captured_arg(&self, index: usize, param: &Param) -> Option<Piece> {
        if let Some(Bytes {
            bytes,
            unreadable: false,
        }) = self.captured.strings[index]
        {
            let limit = self.limits.string_chars;
            let cut = bytes.len() > limit;
            let kept = &bytes[..bytes.len().min(limit)];
            return Some(Piece {
                text: quoted(kept, cut),
                value: Value::Text(String::from_utf8_lossy(kept).into_owned()),
                truncated: cut,
                unavailable: false,
                hidden: false,
            });
        }
        if param.name == "argv" {
            if let Some(argv) = &self.captured.argv {
                return Some(self.argv(argv));
            }
        }
        if param.name == "envp" {
            if let Some((count, more)) = self.captured.envc {
                let plus = if more { "+" } else { "" };
                let vars = if count == 1 && !more { "var" } else { "vars" };
                return Some(Piece::text(format!(
                    "{} /* {count}{plus} {vars} */",
                    pointer(self.args[index])
                )));
            }
        }
        // A NULL structure pointer reads as zero bytes without failing: it is NULL.
        let data =
            self.captured.data[index].filter(|data| !data.unreadable && self.args[index] != 0)?;
        Some(match param.type_name.as_str() {
            "struct sockaddr *" => Piece::text(sockaddr::sockaddr(data.bytes)),
            "struct open_how *" => Piece::text(open_how(data.bytes)),
            _ => self.buffer(index, data.bytes),
        })
    }

    /// A data buffer: as long as its length argument (data written) or the return value
    /// (data read) says, shown up to the session's limit.
    fn buffer(&self, index: usize, bytes: &[u8]) -> Piece {
        let plan = self.signature.capture_plan();
        let op = plan.ops.iter().find(|op| op.arg as usize == index);
        let full = match op {
            Some(op) if op.kind == capture_kind::DATA_IN => self.args[op.len_arg as usize % 6],
            _ => self.ret.max(0) as u64,
        };
        let limit = self.limits.data_bytes;
        let kept = &bytes[..bytes.len().min(limit)];
        let cut = full > kept.len() as u64;
        let text = quoted(kept, cut);
        Piece {
            value: Value::Text(text.clone()),
            text,
            truncated: cut,
            unavailable: false,
            hidden: false,
        }
    }

    fn argv(&self, argv: &super::captured::Argv) -> Piece {
        let limit = self.limits.data_bytes;
        let shown = argv.elements.len().min(self.limits.argv);
        let mut cut = argv.truncated || argv.elements.len() > shown;
        let mut texts = Vec::with_capacity(shown + 1);
        let mut values = Vec::with_capacity(shown);
        for element in &argv.elements[..shown] {
            let kept = &element[..element.len().min(limit)];
            cut |= element.len() > limit;
            texts.push(quoted(kept, element.len() > limit));
            values.push(String::from_utf8_lossy(kept).into_owned());
        }
        if argv.truncated || argv.elements.len() > shown {
            texts.push("...".to_owned());
        }
        Piece {
            text: format!("[{}]", texts.join(", ")),
            value: Value::List(values),
            truncated: cut,
            unavailable: false,
            hidden: false,
        }
    }

    /// Arguments with names: flags, modes, commands, families, signals, `AT_FDCWD`.
    fn symbolic(&self, index: usize, param: &Param, raw: u64) -> Option<Piece> {
        let name = param.name.as_str();
        let text = |text: String| Some(Piece::text(text));
        match (self.name, name) {
            (_, dfd) if dfd.ends_with("dfd") && !param.is_pointer() => {
                if raw as i32 == libc::AT_FDCWD {
                    text("AT_FDCWD".to_owned())
                } else {
                    Some(Piece::int(i64::from(raw as i32)))
                }
            }
            ("open" | "openat", "flags") => text(symbols::open_flags(raw)),
            ("open" | "openat", "mode") => {
                let flags = self.args[index - 1];
                let mut piece = Piece::text(symbols::mode(raw));
                piece.hidden = !symbols::open_takes_mode(flags);
                Some(piece)
            }
            (_, _) if param.type_name == "umode_t" => text(symbols::mode(raw)),
            ("mmap" | "mprotect" | "pkey_mprotect", "prot") => {
                text(symbols::flags(raw, symbols::PROT_FLAGS, "PROT_NONE"))
            }
            ("mmap", "flags") => text(symbols::map_flags(raw)),
            ("mmap", "fd") => Some(Piece::int(i64::from(raw as i32))),
            ("mmap", "off") => text(if raw == 0 {
                "0".to_owned()
            } else {
                format!("{raw:#x}")
            }),
            ("socket" | "socketpair", "family") => {
                text(symbols::symbol(raw, symbols::ADDRESS_FAMILIES))
            }
            ("socket" | "socketpair", "type") => text(symbols::socket_type(raw)),
            ("socket" | "socketpair", "protocol") => {
                text(symbols::socket_protocol(self.args[0], raw))
            }
            ("accept4", "flags") => text(symbols::flags(raw, symbols::SOCKET_FLAGS, "0")),
            (call, "sig") if SIGNAL_SYSCALLS.contains(&call) => text(symbols::signal(raw)),
            ("clone", "clone_flags") => text(symbols::clone_flags(raw)),
            ("fcntl", "cmd") => text(symbols::symbol(raw, symbols::FCNTL_COMMANDS)),
            ("fcntl", "arg") => Some(fcntl_arg(self.args[1], raw)),
            ("ioctl", "cmd") => text(
                symbols::IOCTL_REQUESTS
                    .iter()
                    .find(|&&(value, _)| value == raw & 0xffff_ffff)
                    .map_or_else(|| format!("{raw:#x}"), |&(_, name)| name.to_owned()),
            ),
            ("ioctl", "arg") => text(pointer(raw)),
            ("faccessat2", "flags") => text(symbols::flags(raw, symbols::ACCESS_AT_FLAGS, "0")),
            (call, "flag" | "flags") if AT_FLAG_SYSCALLS.contains(&call) => {
                text(symbols::flags(raw, symbols::AT_FLAGS, "0"))
            }
            (_, "fd" | "oldfd" | "newfd" | "ufd") => Some(Piece::int(i64::from(raw as i32))),
            _ => None,
        }
    }
}

/// `fcntl`'s third argument, by command: flags for the setters, hidden for the getters.
fn fcntl_arg(command: u64, raw: u64) -> Piece {
    let command = command as i32;
    match command {
        libc::F_SETFD => Piece::text(symbols::flags(raw, symbols::FD_FLAGS, "0")),
        libc::F_SETFL => Piece::text(symbols::open_flags(raw)),
        libc::F_GETFD
        | libc::F_GETFL
        | libc::F_GETOWN
        | libc::F_GETLEASE
        | libc::F_GETPIPE_SZ
        | libc::F_GET_SEALS => {
            let mut piece = Piece::uint(raw);
            piece.hidden = true;
            piece
        }
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => Piece::pointer(raw),
        _ => Piece::int(raw as i64),
    }
}

/// `openat2`'s `struct open_how`: flags, mode (when set), resolve.
fn open_how(bytes: &[u8]) -> String {
    let field = |at: usize| {
        bytes
            .get(at..at + 8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
    };
    let (flags, mode, resolve) = (field(0), field(8), field(16));
    let mode = if mode != 0 || symbols::open_takes_mode(flags) {
        format!(", mode={}", symbols::mode(mode))
    } else {
        String::new()
    };
    format!(
        "{{flags={}{mode}, resolve={}}}",
        symbols::open_flags(flags),
        symbols::flags(resolve, symbols::RESOLVE_FLAGS, "0")
    )
}

/// An integer argument by its C type: signed 32-bit types sign-extended from the register's
/// low half, 64-bit signed types as they are, the rest unsigned.
fn integer(type_name: &str, name: &str, raw: u64) -> Piece {
    match type_name {
        "int" | "pid_t" | "key_serial_t" | "clockid_t" | "mqd_t" | "timer_t" | "rwf_t"
        | "__s32" => Piece::int(i64::from(raw as i32)),
        "long" | "loff_t" | "off_t" | "ssize_t" | "__kernel_old_time_t" => Piece::int(raw as i64),
        "unsigned int" | "uid_t" | "gid_t" | "u32" | "__u32" | "qid_t" | "old_uid_t"
        | "old_gid_t" => Piece::uint(raw & 0xffff_ffff),
        _ if name == "fd" => Piece::int(i64::from(raw as i32)),
        _ => Piece::uint(raw),
    }
}

#[cfg(test)]
mod tests;
