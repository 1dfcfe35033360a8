//! The argument data that follows a record (see `tracer_common::CaptureItem`), read back
//! per argument: the last item for an argument counts (the kernel appends a second string
//! at exit when the first could not be read at entry).
use tracer_common::{capture_kind, item_flags, CaptureItem};

/// Bytes read from user memory for one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes<'a> {
    pub bytes: &'a [u8],
    /// The memory could not be read.
    pub unreadable: bool,
}

/// An `execve` argv: the elements kept, and whether more followed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Argv<'a> {
    pub elements: Vec<&'a [u8]>,
    pub truncated: bool,
    pub unreadable: bool,
}

/// Everything captured for one record, by argument.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured<'a> {
    /// String arguments (without their NUL).
    pub strings: [Option<Bytes<'a>>; 6],
    /// Buffers and structures.
    pub data: [Option<Bytes<'a>>; 6],
    pub argv: Option<Argv<'a>>,
    /// Environment variables counted, and whether there were more.
    pub envc: Option<(u16, bool)>,
}

impl<'a> Captured<'a> {
    /// Reads the items in `data`; a malformed tail is ignored.
    pub fn parse(data: &'a [u8]) -> Self {
        let mut captured = Self::default();
        let mut offset = 0;
        let mut ended = false;
        let header = size_of::<CaptureItem>();
        while let Some(head) = data.get(offset..offset + header) {
            let (kind, arg, flags) = (head[0], head[1] as usize, head[2]);
            let len = u16::from_ne_bytes([head[4], head[5]]) as usize;
            let count = u16::from_ne_bytes([head[6], head[7]]);
            let Some(payload) = data.get(offset + header..offset + header + len) else {
                break;
            };
            let unreadable = flags & item_flags::UNREADABLE != 0;
            let bytes = Some(Bytes {
                bytes: payload,
                unreadable,
            });
            match kind {
                capture_kind::STRING if arg < 6 => captured.strings[arg] = bytes,
                capture_kind::DATA_IN
                | capture_kind::DATA_OUT
                | capture_kind::RAW_IN
                | capture_kind::RAW_OUT
                    if arg < 6 =>
                {
                    captured.data[arg] = bytes;
                }
                capture_kind::ARGV_ITEM => captured
                    .argv
                    .get_or_insert_with(Argv::default)
                    .elements
                    .push(payload),
                capture_kind::ARGV_END => {
                    ended = true;
                    let argv = captured.argv.get_or_insert_with(Argv::default);
                    argv.truncated = flags & item_flags::TRUNCATED != 0;
                    argv.unreadable = unreadable;
                }
                capture_kind::ENVC => {
                    captured.envc = Some((count, flags & item_flags::TRUNCATED != 0));
                }
                _ => {}
            }
            offset += CaptureItem::stride(len);
        }
        // An argv without its end marker was cut by a full capture area.
        if let Some(argv) = &mut captured.argv {
            argv.truncated |= !ended;
        }
        captured
    }
}

/// Appends an item as the kernel writes it (tests and benchmarks make records with it).
pub fn push_item(kind: u8, arg: u8, flags: u8, payload: &[u8], count: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[kind, arg, flags, 0]);
    out.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
    out.extend_from_slice(&count.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(8), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_read_per_argument_and_the_last_string_counts() {
        let mut data = Vec::new();
        push_item(
            capture_kind::STRING,
            0,
            item_flags::UNREADABLE,
            b"",
            0,
            &mut data,
        );
        push_item(capture_kind::ARGV_ITEM, 1, 0, b"ls", 0, &mut data);
        push_item(capture_kind::ARGV_ITEM, 1, 0, b"-l", 0, &mut data);
        push_item(
            capture_kind::ARGV_END,
            1,
            item_flags::TRUNCATED,
            b"",
            2,
            &mut data,
        );
        push_item(capture_kind::ENVC, 2, 0, b"", 17, &mut data);
        push_item(capture_kind::STRING, 0, 0, b"/bin/ls", 0, &mut data);
        push_item(capture_kind::DATA_IN, 3, 0, b"hello world", 0, &mut data);
        let captured = Captured::parse(&data);
        assert_eq!(
            captured.strings[0],
            Some(Bytes {
                bytes: b"/bin/ls",
                unreadable: false
            })
        );
        let argv = captured.argv.unwrap();
        assert_eq!(argv.elements, [b"ls".as_slice(), b"-l"]);
        assert!(argv.truncated);
        assert_eq!(captured.envc, Some((17, false)));
        assert_eq!(captured.data[3].unwrap().bytes, b"hello world");
        // An argv the full capture area cut before its end marker is truncated.
        let mut cut = Vec::new();
        push_item(capture_kind::ARGV_ITEM, 1, 0, b"ls", 0, &mut cut);
        assert!(Captured::parse(&cut).argv.unwrap().truncated);
        // A payload cut short ends the parse without a panic.
        let cut = &data[..data.len() - 8];
        assert_eq!(Captured::parse(cut).data[3], None);
    }
}
