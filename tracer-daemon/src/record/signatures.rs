//! Every syscall's argument names and C types, as the running kernel describes them in
//! tracefs (`events/syscalls/sys_enter_<name>/format`), read once per process.
//!
//! The kernel is the source, not a table of ours: it knows which arguments each syscall
//! takes on this architecture and what they are called (`dfd`, `filename`, `flags`, `mode`
//! for `openat`). What to capture for a syscall ([`Signature::capture_plan`]) and how its
//! arguments read ([`super::decode`]) follow from these names and types.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use tracer_common::{capture_kind, CaptureOp, CapturePlan, CAPTURE_OPS, MAX_SYSCALLS};

/// One argument of a syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// The C type, as the kernel prints it (`const char *`, `unsigned long`, `int *`).
    pub type_name: String,
}

impl Param {
    pub fn is_pointer(&self) -> bool {
        self.type_name.ends_with('*')
    }
}

/// A syscall's name (as the host's syscall table spells it) and arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: &'static str,
    pub params: Vec<Param>,
    /// What the kernel reads for it, worked out once from the above (decoding asks for it
    /// with every event).
    plan: CapturePlan,
}

/// The signatures of the syscalls of this kernel, by number.
#[derive(Debug, Default)]
pub struct Signatures {
    by_nr: Vec<Option<Signature>>,
}

/// Reading the signatures failed (they are then unknown: events show raw registers).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("listing {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Signatures {
    /// Reads every `sys_enter_*` format under `tracefs_root`. Formats that cannot be read
    /// or name a syscall this architecture's table lacks are skipped.
    pub fn from_tracefs(tracefs_root: &Path) -> Result<Self, SignatureError> {
        let dir = tracefs_root.join("events").join("syscalls");
        let entries = std::fs::read_dir(&dir).map_err(|source| SignatureError::List {
            dir: dir.clone(),
            source,
        })?;
        let mut signatures = Self::default();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix("sys_enter_"))
            else {
                continue;
            };
            let format = entry.path().join("format");
            if let Ok(text) = tracefs_parse::read_description(&format) {
                signatures.add(name, &text);
            }
        }
        Ok(signatures)
    }

    /// Adds the syscall the kernel calls `kernel_name`, from its `sys_enter` format text.
    /// False if the format does not parse or the name has no number here.
    pub fn add(&mut self, kernel_name: &str, format_text: &str) -> bool {
        let Some(sysno) = host_sysno(kernel_name) else {
            return false;
        };
        let Ok(format) = tracefs_parse::EventFormat::parse(format_text) else {
            return false;
        };
        // The arguments are the fields after the syscall number.
        let params = format
            .fields
            .iter()
            .skip_while(|field| field.name != "__syscall_nr")
            .skip(1)
            .map(|field| Param {
                name: field.name.clone(),
                type_name: field.type_name.clone(),
            })
            .collect();
        let nr = sysno.id() as usize;
        if nr >= MAX_SYSCALLS as usize {
            return false;
        }
        if self.by_nr.len() <= nr {
            self.by_nr.resize(nr + 1, None);
        }
        let mut signature = Signature {
            name: sysno.name(),
            params,
            plan: CapturePlan::default(),
        };
        signature.plan = signature.make_capture_plan();
        self.by_nr[nr] = Some(signature);
        true
    }

    pub fn get(&self, nr: u32) -> Option<&Signature> {
        self.by_nr.get(nr as usize)?.as_ref()
    }

    /// How many syscalls have a signature.
    pub fn len(&self) -> usize {
        self.by_nr.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (syscall number, capture plan) for every syscall with something to capture.
    pub fn capture_plans(&self) -> impl Iterator<Item = (u32, CapturePlan)> + '_ {
        self.by_nr.iter().enumerate().filter_map(|(nr, signature)| {
            let plan = signature.as_ref()?.capture_plan();
            (plan.ops[0].kind != capture_kind::NONE).then_some((nr as u32, plan))
        })
    }
}

/// The kernel's name for a syscall as the host's table spells it: the kernel prefixes a few
/// whose layout changed (`newstat` is `stat`, `newuname` is `uname`), and names `umount2`
/// after the call it implements.
fn host_sysno(kernel_name: &str) -> Option<syscalls::Sysno> {
    let kernel_name = match kernel_name {
        "umount" if "umount".parse::<syscalls::Sysno>().is_err() => "umount2",
        name => name,
    };
    kernel_name.parse().ok().or_else(|| {
        kernel_name
            .strip_prefix("new")
            .and_then(|name| name.parse().ok())
    })
}

/// Buffers whose contents are data, with the argument that gives their length (`None`: the
/// return value does, read at exit). The kernel types them `char *`/`void *` like any
/// other pointer, so which ones are data is ours to say: the calls strace shows data for.
const DATA_BUFFERS: &[(&str, &str, Option<&str>)] = &[
    ("read", "buf", None),
    ("pread64", "buf", None),
    ("recvfrom", "ubuf", None),
    ("write", "buf", Some("count")),
    ("pwrite64", "buf", Some("count")),
    ("sendto", "buff", Some("len")),
];

impl Signature {
    /// What the kernel reads for this syscall: every `const char *` (a string, save the two
    /// that are data buffers), the data buffers above, a `struct sockaddr *` with its length
    /// (given: read at entry; returned through an `int *`: at exit), `openat2`'s
    /// `struct open_how`, and `execve`'s argv and environment. At most [`CAPTURE_OPS`].
    pub fn capture_plan(&self) -> CapturePlan {
        self.plan
    }

    fn make_capture_plan(&self) -> CapturePlan {
        let mut plan = CapturePlan::default();
        let ops = self
            .params
            .iter()
            .enumerate()
            .filter_map(|(index, param)| self.op_for(index, param));
        for (slot, op) in plan.ops.iter_mut().zip(ops.take(CAPTURE_OPS)) {
            *slot = op;
        }
        plan
    }

    fn op_for(&self, index: usize, param: &Param) -> Option<CaptureOp> {
        let position = |name: &str| self.params.iter().position(|p| p.name == name);
        let next = self.params.get(index + 1);
        let op = |kind, len_arg: Option<usize>| CaptureOp {
            kind,
            arg: index as u8,
            len_arg: len_arg.unwrap_or(0) as u8,
            _pad: 0,
        };
        if let Some(&(_, _, length)) = DATA_BUFFERS
            .iter()
            .find(|(call, buf, _)| *call == self.name && *buf == param.name)
        {
            return Some(match length {
                Some(length) => op(capture_kind::DATA_IN, Some(position(length)?)),
                None => op(capture_kind::DATA_OUT, None),
            });
        }
        // A path, whatever its type says (`umount2`'s is a `char *`), and `mount`'s strings
        // (its source, target and filesystem type are `char *` too).
        let nr = self.name.parse::<syscalls::Sysno>().ok()?.id() as u32;
        let mount_string = self.name == "mount" && param.type_name == "char *";
        if mount_string || super::syscalls::path_index(nr) == Some(index) {
            return Some(op(capture_kind::STRING, None));
        }
        match param.type_name.as_str() {
            "const char *" => Some(op(capture_kind::STRING, None)),
            "const char *const *" if param.name == "argv" => Some(op(capture_kind::ARGV, None)),
            "const char *const *" if param.name == "envp" => Some(op(capture_kind::ENVC, None)),
            "struct sockaddr *" => match next.map(|p| p.type_name.as_str()) {
                Some("int") => Some(op(capture_kind::RAW_IN, Some(index + 1))),
                Some("int *") => Some(op(capture_kind::RAW_OUT, Some(index + 1))),
                _ => None,
            },
            "struct open_how *" => Some(op(capture_kind::RAW_IN, Some(position("usize")?))),
            _ => None,
        }
    }
}

static LOADED: OnceLock<Signatures> = OnceLock::new();
static NONE: OnceLock<Signatures> = OnceLock::new();

/// This kernel's signatures, read from tracefs at the first call (`root` finds it); empty
/// if tracefs cannot be read, which is logged once.
pub fn load_once(root: impl FnOnce() -> Option<PathBuf>) -> &'static Signatures {
    LOADED.get_or_init(|| {
        let Some(root) = root() else {
            tracing::warn!(
                "tracefs is not mounted: syscall arguments are shown as registers (in a \
                 container, add -v /sys/kernel/tracing:/sys/kernel/tracing)"
            );
            return Signatures::default();
        };
        match Signatures::from_tracefs(&root) {
            Ok(signatures) => {
                tracing::info!(
                    syscalls = signatures.len(),
                    "syscall signatures read from {}",
                    root.display()
                );
                signatures
            }
            Err(err) => {
                tracing::warn!("{err}: syscall arguments are shown as registers");
                Signatures::default()
            }
        }
    })
}

/// The signatures [`load_once`] read, or none yet.
pub fn signatures() -> &'static Signatures {
    LOADED
        .get()
        .unwrap_or_else(|| NONE.get_or_init(Signatures::default))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Formats captured from this kernel's tracefs (Linux 6.18, x86_64).
    use super::Signatures;

    /// (kernel name, the fields after `__syscall_nr`).
    const CAPTURED: &[(&str, &[&str])] = &[
        (
            "openat",
            &[
                "int dfd",
                "const char * filename",
                "int flags",
                "umode_t mode",
            ],
        ),
        (
            "openat2",
            &[
                "int dfd",
                "const char * filename",
                "struct open_how * how",
                "size_t usize",
            ],
        ),
        ("read", &["unsigned int fd", "char * buf", "size_t count"]),
        (
            "write",
            &["unsigned int fd", "const char * buf", "size_t count"],
        ),
        (
            "connect",
            &["int fd", "struct sockaddr * uservaddr", "int addrlen"],
        ),
        (
            "bind",
            &["int fd", "struct sockaddr * umyaddr", "int addrlen"],
        ),
        (
            "accept4",
            &[
                "int fd",
                "struct sockaddr * upeer_sockaddr",
                "int * upeer_addrlen",
                "int flags",
            ],
        ),
        ("socket", &["int family", "int type", "int protocol"]),
        (
            "mmap",
            &[
                "unsigned long addr",
                "unsigned long len",
                "unsigned long prot",
                "unsigned long flags",
                "unsigned long fd",
                "unsigned long off",
            ],
        ),
        (
            "mprotect",
            &["unsigned long start", "size_t len", "unsigned long prot"],
        ),
        ("kill", &["pid_t pid", "int sig"]),
        (
            "execve",
            &[
                "const char * filename",
                "const char *const * argv",
                "const char *const * envp",
            ],
        ),
        (
            "clone",
            &[
                "unsigned long clone_flags",
                "unsigned long newsp",
                "int * parent_tidptr",
                "int * child_tidptr",
                "unsigned long tls",
            ],
        ),
        (
            "fcntl",
            &["unsigned int fd", "unsigned int cmd", "unsigned long arg"],
        ),
        (
            "ioctl",
            &["unsigned int fd", "unsigned int cmd", "unsigned long arg"],
        ),
        (
            "newfstatat",
            &[
                "int dfd",
                "const char * filename",
                "struct stat * statbuf",
                "int flag",
            ],
        ),
        ("exit_group", &["int error_code"]),
        (
            "mount",
            &[
                "char * dev_name",
                "char * dir_name",
                "char * type",
                "unsigned long flags",
                "void * data",
            ],
        ),
        ("umount", &["char * name", "int flags"]),
        ("getppid", &[]),
    ];

    /// The format file the kernel would serve for `name` with `params`.
    pub fn format_text(name: &str, params: &[&str]) -> String {
        let mut text = format!(
            "name: sys_enter_{name}\nID: 1\nformat:\n\
             \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
             \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
             \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
             \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
        );
        for (index, param) in params.iter().enumerate() {
            text.push_str(&format!(
                "\tfield:{param};\toffset:{};\tsize:8;\tsigned:0;\n",
                16 + 8 * index
            ));
        }
        text.push_str("\nprint fmt: \"\"\n");
        text
    }

    pub fn signatures() -> Signatures {
        let mut signatures = Signatures::default();
        for (name, params) in CAPTURED {
            assert!(signatures.add(name, &format_text(name, params)), "{name}");
        }
        signatures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscalls::Sysno;

    fn plan(name: Sysno) -> Vec<(u8, u8, u8)> {
        let signatures = fixtures::signatures();
        let plan = signatures.get(name.id() as u32).unwrap().capture_plan();
        plan.ops
            .iter()
            .take_while(|op| op.kind != capture_kind::NONE)
            .map(|op| (op.kind, op.arg, op.len_arg))
            .collect()
    }

    #[test]
    fn arguments_come_from_the_format_with_kernel_renames_resolved() {
        let signatures = fixtures::signatures();
        let openat = signatures.get(Sysno::openat.id() as u32).unwrap();
        let names: Vec<&str> = openat.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dfd", "filename", "flags", "mode"]);
        assert_eq!(openat.params[1].type_name, "const char *");
        assert!(openat.params[1].is_pointer());
        // `newfstatat` keeps its name; getppid takes nothing.
        let stat = signatures.get(Sysno::newfstatat.id() as u32).unwrap();
        assert_eq!(stat.name, "newfstatat");
        assert!(signatures
            .get(Sysno::getppid.id() as u32)
            .unwrap()
            .params
            .is_empty());
        assert!(!Signatures::default().add("no_such_call", &fixtures::format_text("x", &[])));
    }

    #[test]
    fn plans_follow_from_names_and_types() {
        use capture_kind::*;
        assert_eq!(plan(Sysno::openat), [(STRING, 1, 0)]);
        assert_eq!(plan(Sysno::openat2), [(STRING, 1, 0), (RAW_IN, 2, 3)]);
        assert_eq!(plan(Sysno::read), [(DATA_OUT, 1, 0)]);
        assert_eq!(plan(Sysno::write), [(DATA_IN, 1, 2)]);
        assert_eq!(plan(Sysno::connect), [(RAW_IN, 1, 2)]);
        assert_eq!(plan(Sysno::accept4), [(RAW_OUT, 1, 2)]);
        assert_eq!(
            plan(Sysno::execve),
            [(STRING, 0, 0), (ARGV, 1, 0), (ENVC, 2, 0)]
        );
        assert!(plan(Sysno::mmap).is_empty());
        assert_eq!(
            plan(Sysno::mount),
            [(STRING, 0, 0), (STRING, 1, 0), (STRING, 2, 0)]
        );
        // The kernel's `umount` event is the `umount2` call.
        assert_eq!(plan(Sysno::umount2), [(STRING, 0, 0)]);
        assert!(plan(Sysno::kill).is_empty());
        let signatures = fixtures::signatures();
        let with_plans: Vec<u32> = signatures.capture_plans().map(|(nr, _)| nr).collect();
        assert!(with_plans.contains(&(Sysno::openat.id() as u32)));
        assert!(!with_plans.contains(&(Sysno::getppid.id() as u32)));
    }
}
