//! Decoding the records tracerd enables, with layouts read from the running kernel's
//! `format` files (no hard-coded offsets).
use std::path::Path;

use tracefs_parse::{EventFormat, Field, Page, PageHeaderLayout};
use tracer_common::COMM_LEN;

use super::tracefs::TracefsError;

/// Task name as the kernel keeps it: up to 15 bytes and a NUL.
pub type Comm = [u8; COMM_LEN];

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raw {
    Enter {
        tid: u32,
        nr: i64,
        args: [u64; 6],
    },
    Exit {
        tid: u32,
        nr: i64,
        ret: i64,
    },
    /// `tid` (the current task) made a new task: a thread when `CLONE_THREAD` is set.
    NewTask {
        tid: u32,
        child: u32,
        clone_flags: u64,
    },
    /// `tid` ran a new program (`old_tid` is the thread that called exec, when a non-leader
    /// thread did); `comm` is the name the task has now.
    Exec {
        tid: u32,
        old_tid: u32,
        comm: Comm,
    },
    Rename {
        tid: u32,
        comm: Comm,
    },
    ProcessExit {
        tid: u32,
    },
    /// `pid` joined cgroup `cgroup_id` of hierarchy `root` (0 is cgroup v2).
    Attach {
        root: i64,
        cgroup_id: u64,
        pid: u32,
    },
}

/// The events an instance of tracerd enables, as `system/event`.
pub const SYSCALL_ENTER: &str = "raw_syscalls/sys_enter";
pub const SYSCALL_EXIT: &str = "raw_syscalls/sys_exit";
/// Events that keep each task's process (tgid) and name current, in the same stream as
/// its syscalls. Optional: a kernel without them falls back to /proc.
pub const TASK_EVENTS: [&str; 4] = [
    "task/task_newtask",
    "task/task_rename",
    "sched/sched_process_exec",
    "sched/sched_process_exit",
];
pub const CGROUP_ATTACH: &str = "cgroup/cgroup_attach_task";

const CLONE_THREAD: u64 = 0x0001_0000;

struct Layout {
    id: u64,
    fields: Vec<Field>,
}

/// Decodes records of the events above by their `common_type`.
pub struct Decoder {
    common_type: Field,
    common_pid: Field,
    layouts: Vec<(Layout, Kind)>,
    /// The syscall events at fixed offsets, when their fields are the usual ones.
    syscalls: Option<SyscallLayout>,
}

/// Where the syscall events' fields are, when every one is the 8-byte integer of a 64-bit
/// kernel (and the common fields the usual u16 type and i32 pid): nearly every record is one
/// of them, and reading them at fixed offsets halved the decoder's time (the generic reads
/// check each field's size and bounds).
#[derive(Clone, Copy)]
struct SyscallLayout {
    type_at: usize,
    pid_at: usize,
    enter: u64,
    exit: u64,
    enter_nr_at: usize,
    args_at: usize,
    exit_nr_at: usize,
    ret_at: usize,
}

impl SyscallLayout {
    fn of(decoder: &Decoder) -> Option<Self> {
        let layout = |wanted: fn(&Kind) -> bool| {
            decoder
                .layouts
                .iter()
                .find(|(_, kind)| wanted(kind))
                .map(|(layout, _)| layout)
        };
        let enter = layout(|kind| matches!(kind, Kind::Enter))?;
        let exit = layout(|kind| matches!(kind, Kind::Exit))?;
        let words = |field: &Field, count: usize| field.size == 8 * count && !field.is_data_loc();
        let usual = decoder.common_type.size == 2
            && decoder.common_pid.size == 4
            && words(&enter.fields[0], 1)
            && words(&enter.fields[1], 6)
            && words(&exit.fields[0], 1)
            && words(&exit.fields[1], 1);
        usual.then(|| Self {
            type_at: decoder.common_type.offset,
            pid_at: decoder.common_pid.offset,
            enter: enter.id,
            exit: exit.id,
            enter_nr_at: enter.fields[0].offset,
            args_at: enter.fields[1].offset,
            exit_nr_at: exit.fields[0].offset,
            ret_at: exit.fields[1].offset,
        })
    }

    /// A syscall event; `None` for another event or a record too short.
    fn decode(&self, record: &[u8]) -> Option<Raw> {
        let common_type = u16::from_ne_bytes(array(record, self.type_at)?) as u64;
        let tid = i32::from_ne_bytes(array(record, self.pid_at)?) as u32;
        let word = |at: usize| array(record, at).map(i64::from_ne_bytes);
        if common_type == self.enter {
            let words: [u8; 48] = array(record, self.args_at)?;
            let mut args = [0u64; 6];
            for (arg, bytes) in args.iter_mut().zip(words.chunks_exact(8)) {
                *arg = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
            }
            Some(Raw::Enter {
                tid,
                nr: word(self.enter_nr_at)?,
                args,
            })
        } else if common_type == self.exit {
            Some(Raw::Exit {
                tid,
                nr: word(self.exit_nr_at)?,
                ret: word(self.ret_at)?,
            })
        } else {
            None
        }
    }
}

/// The `N` bytes of `record` at `at`, if it has them.
fn array<const N: usize>(record: &[u8], at: usize) -> Option<[u8; N]> {
    record.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[derive(Clone, Copy)]
enum Kind {
    Enter,
    Exit,
    NewTask,
    Rename,
    Exec,
    ProcessExit,
    Attach,
}

impl Decoder {
    /// Reads the formats from tracefs at `root`. The syscall events are required; the task
    /// and cgroup events are used when the kernel has them.
    pub fn load(root: &Path) -> Result<Self, TracefsError> {
        let mut decoder: Option<Decoder> = None;
        let kinds = [
            (SYSCALL_ENTER, Kind::Enter, &["id", "args"][..], true),
            (SYSCALL_EXIT, Kind::Exit, &["id", "ret"], true),
            (
                TASK_EVENTS[0],
                Kind::NewTask,
                &["pid", "clone_flags"],
                false,
            ),
            (TASK_EVENTS[1], Kind::Rename, &["pid", "newcomm"], false),
            (
                TASK_EVENTS[2],
                Kind::Exec,
                &["pid", "old_pid", "filename"],
                false,
            ),
            (TASK_EVENTS[3], Kind::ProcessExit, &["pid"], false),
            (
                CGROUP_ATTACH,
                Kind::Attach,
                &["dst_root", "dst_id", "pid"],
                false,
            ),
        ];
        for (event, kind, names, required) in kinds {
            let path = root.join("events").join(event).join("format");
            let format = match tracefs_parse::read_description(&path) {
                Ok(text) => EventFormat::parse(&text).map_err(|err| TracefsError::Format {
                    path: path.clone(),
                    message: err.to_string(),
                })?,
                Err(err) if !required => {
                    tracing::debug!(%event, %err, "event not available");
                    continue;
                }
                Err(err) => return Err(TracefsError::io("reading", &path, err)),
            };
            let field = |name: &str| {
                format
                    .field(name)
                    .cloned()
                    .map_err(|err| TracefsError::Format {
                        path: path.clone(),
                        message: err.to_string(),
                    })
            };
            let decoder = match &mut decoder {
                Some(decoder) => decoder,
                None => decoder.insert(Decoder {
                    common_type: field("common_type")?,
                    common_pid: field("common_pid")?,
                    layouts: Vec::new(),
                    syscalls: None,
                }),
            };
            let fields = names
                .iter()
                .map(|name| field(name))
                .collect::<Result<_, _>>()?;
            decoder.layouts.push((
                Layout {
                    id: format.id as u64,
                    fields,
                },
                kind,
            ));
        }
        let mut decoder = decoder.ok_or(TracefsError::NotMounted)?;
        decoder.syscalls = SyscallLayout::of(&decoder);
        Ok(decoder)
    }

    /// Whether the kernel has the task events (so names and processes come from the stream).
    pub fn has_task_events(&self) -> bool {
        self.layouts
            .iter()
            .any(|(_, kind)| matches!(kind, Kind::NewTask))
    }

    /// Whether the kernel has `cgroup/cgroup_attach_task` (needed to follow cgroup joins).
    pub fn has_cgroup_attach(&self) -> bool {
        self.layouts
            .iter()
            .any(|(_, kind)| matches!(kind, Kind::Attach))
    }

    /// Decodes one record, or `None` for a record of another event or one too short for its
    /// layout.
    pub fn decode(&self, record: &[u8]) -> Option<Raw> {
        match &self.syscalls {
            Some(syscalls) => syscalls
                .decode(record)
                .or_else(|| self.decode_by_format(record)),
            None => self.decode_by_format(record),
        }
    }

    /// Decodes one record by the fields of its event's format.
    fn decode_by_format(&self, record: &[u8]) -> Option<Raw> {
        let common_type = self.common_type.read_u64(record)?;
        let (layout, kind) = self
            .layouts
            .iter()
            .find(|(layout, _)| layout.id == common_type)?;
        let tid = self.common_pid.read_u64(record)? as u32;
        let f = &layout.fields;
        let int = |index: usize| f[index].read_u64(record);
        Some(match kind {
            Kind::Enter => {
                let mut args = [0u64; 6];
                let width = f[1].size / 6;
                for (index, arg) in args.iter_mut().enumerate() {
                    *arg = f[1].read_element(record, index, width)?;
                }
                Raw::Enter {
                    tid,
                    nr: int(0)? as i64,
                    args,
                }
            }
            Kind::Exit => Raw::Exit {
                tid,
                nr: int(0)? as i64,
                ret: int(1)? as i64,
            },
            Kind::NewTask => Raw::NewTask {
                tid,
                child: int(0)? as u32,
                clone_flags: int(1)?,
            },
            Kind::Rename => Raw::Rename {
                tid: int(0)? as u32,
                comm: comm_of(f[1].read_str(record)?),
            },
            Kind::Exec => {
                // The kernel names the task after the program file's last component.
                let filename = f[2].read_str(record)?;
                let base = filename.rsplit(|&b| b == b'/').next().unwrap_or(filename);
                Raw::Exec {
                    tid: int(0)? as u32,
                    old_tid: int(1)? as u32,
                    comm: comm_of(base),
                }
            }
            Kind::ProcessExit => Raw::ProcessExit {
                tid: int(0)? as u32,
            },
            Kind::Attach => Raw::Attach {
                root: int(0)? as i64,
                cgroup_id: int(1)?,
                pid: int(2)? as u32,
            },
        })
    }
}

impl Raw {
    /// The thread a new task belongs to: its own process, or its creator's for a thread.
    pub fn is_thread(clone_flags: u64) -> bool {
        clone_flags & CLONE_THREAD != 0
    }
}

/// A task name, truncated to 15 bytes and NUL-terminated as the kernel keeps it.
pub fn comm_of(name: &[u8]) -> Comm {
    let mut comm = [0u8; COMM_LEN];
    let len = name.len().min(COMM_LEN - 1);
    comm[..len].copy_from_slice(&name[..len]);
    comm
}

/// Appends a page's decodable events to `batch`. A page that does not parse is logged and
/// skipped: its events cannot be counted, the kernel's own counters cover what it lost.
pub(super) fn decode_page(
    layout: &PageHeaderLayout,
    decoder: &Decoder,
    bytes: &[u8],
    batch: &mut Vec<(u64, Raw)>,
) {
    let page = match Page::parse(layout, bytes) {
        Ok(page) => page,
        Err(err) => {
            tracing::error!(%err, "a trace_pipe_raw page did not parse");
            return;
        }
    };
    for event in page.events() {
        match event {
            Ok(event) => {
                if let Some(raw) = decoder.decode(event.record) {
                    batch.push((event.timestamp, raw));
                }
            }
            Err(err) => {
                tracing::error!(%err, "a trace_pipe_raw page did not parse to its end");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format files captured from a real kernel (`fuzz/seeds/format/`), built into the
    /// test so it needs neither root nor the source tree at run time.
    const CAPTURED: [(&str, &str); 7] = [
        (
            SYSCALL_ENTER,
            include_str!("../../../../fuzz/seeds/format/sys_enter"),
        ),
        (
            SYSCALL_EXIT,
            include_str!("../../../../fuzz/seeds/format/sys_exit"),
        ),
        (
            CGROUP_ATTACH,
            include_str!("../../../../fuzz/seeds/format/cgroup_attach_task"),
        ),
        (
            TASK_EVENTS[0],
            include_str!("../../../../fuzz/seeds/format/task_newtask"),
        ),
        (
            TASK_EVENTS[1],
            include_str!("../../../../fuzz/seeds/format/task_rename"),
        ),
        (
            TASK_EVENTS[2],
            include_str!("../../../../fuzz/seeds/format/sched_process_exec"),
        ),
        (
            TASK_EVENTS[3],
            include_str!("../../../../fuzz/seeds/format/sched_process_exit"),
        ),
    ];

    /// A tracefs-like tree of the captured format files.
    fn captured_tracefs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (event, format) in CAPTURED {
            let dir = root.path().join("events").join(event);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("format"), format).unwrap();
        }
        root
    }

    #[test]
    fn decodes_records_of_a_real_kernel() {
        let root = captured_tracefs();
        let decoder = Decoder::load(root.path()).unwrap();
        assert!(decoder.has_task_events());
        let enter = &decoder.layouts[0].0;
        let mut record = vec![0u8; 64];
        record[..2].copy_from_slice(&(enter.id as u16).to_ne_bytes());
        record[4..8].copy_from_slice(&77i32.to_ne_bytes());
        record[8..16].copy_from_slice(&39i64.to_ne_bytes());
        record[16..24].copy_from_slice(&5u64.to_ne_bytes());
        assert_eq!(
            decoder.decode(&record),
            Some(Raw::Enter {
                tid: 77,
                nr: 39,
                args: [5, 0, 0, 0, 0, 0]
            })
        );
        record[..2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(decoder.decode(&record), None);
    }

    #[test]
    fn syscall_events_decode_at_fixed_offsets_as_by_their_format() {
        let root = captured_tracefs();
        let decoder = Decoder::load(root.path()).unwrap();
        assert!(decoder.syscalls.is_some(), "the usual layout");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (layout, _) in &decoder.layouts {
            for len in [0, 7, 15, 16, 23, 24, 63, 64, 72, 80] {
                let mut record: Vec<u8> = (0..len).map(|_| random() as u8).collect();
                if len >= 2 {
                    record[..2].copy_from_slice(&(layout.id as u16).to_ne_bytes());
                }
                assert_eq!(
                    decoder.decode(&record),
                    decoder.decode_by_format(&record),
                    "event {} in {len} bytes",
                    layout.id
                );
            }
        }
    }

    #[test]
    fn names_like_the_kernel() {
        assert_eq!(&comm_of(b"syscall_loop")[..13], b"syscall_loop\0");
        assert_eq!(comm_of(b"a_very_long_program_name")[15], 0);
    }
}
