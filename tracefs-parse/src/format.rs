//! Event layouts from tracefs description files.
//!
//! An event's `format` file lists its fields, one per line (tab-separated; shown with spaces):
//!
//! ```text
//! name: sys_enter
//! ID: 443
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     field:long id;    offset:8;    size:8;    signed:1;
//!     field:unsigned long args[6];    offset:16;    size:48;    signed:0;
//! ```
//!
//! `events/header_page` uses the same field syntax for the page header (`timestamp`,
//! `commit`, `data`).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("the format has no `{0}:` line")]
    MissingKey(&'static str),
    #[error("bad `{key}` value {value:?}")]
    BadNumber { key: &'static str, value: String },
    #[error("bad field line {0:?}")]
    BadField(String),
    #[error("the format has no field `{0}`")]
    MissingField(String),
    #[error("field `{name}` is {size} bytes at offset {offset}: {why}")]
    BadLayout {
        name: String,
        offset: usize,
        size: usize,
        why: &'static str,
    },
}

/// One field of an event record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C type as the kernel prints it, array suffix included (`char[16]`,
    /// `__data_loc char[]`).
    pub type_name: String,
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

impl Field {
    /// A `__data_loc` field: a 32-bit (offset, length) pair pointing at data later in the
    /// record, for variable-length strings and arrays.
    pub fn is_data_loc(&self) -> bool {
        self.type_name.starts_with("__data_loc")
    }

    /// The field's bytes in `record`, or `None` if the record is too short.
    pub fn bytes<'a>(&self, record: &'a [u8]) -> Option<&'a [u8]> {
        record.get(self.offset..self.offset.checked_add(self.size)?)
    }

    /// The field as an integer, sign-extended if the field is signed. `None` if the record is
    /// too short or the field is not 1, 2, 4 or 8 bytes.
    pub fn read_u64(&self, record: &[u8]) -> Option<u64> {
        read_int(self.bytes(record)?, self.signed)
    }

    pub fn read_i64(&self, record: &[u8]) -> Option<i64> {
        self.read_u64(record).map(|value| value as i64)
    }

    /// Element `index` of an integer array field (`unsigned long args[6]`), each element
    /// `element_size` bytes.
    pub fn read_element(&self, record: &[u8], index: usize, element_size: usize) -> Option<u64> {
        let start = index.checked_mul(element_size)?;
        if start.checked_add(element_size)? > self.size {
            return None;
        }
        let bytes = self.bytes(record)?;
        read_int(&bytes[start..start + element_size], self.signed)
    }

    /// A string field, up to its first NUL: a fixed `char[N]` array or a `__data_loc`
    /// string. `None` if the record is too short or the location points outside it.
    pub fn read_str<'a>(&self, record: &'a [u8]) -> Option<&'a [u8]> {
        let bytes = if self.is_data_loc() {
            let location = read_int(self.bytes(record)?, false)? as u32;
            let (offset, len) = ((location & 0xffff) as usize, (location >> 16) as usize);
            record.get(offset..offset + len)?
        } else {
            self.bytes(record)?
        };
        Some(bytes.split(|&b| b == 0).next().unwrap_or(bytes))
    }
}

/// Reads a native-endian integer of 1, 2, 4 or 8 bytes (the kernel writes records in the
/// host's byte order).
fn read_int(bytes: &[u8], signed: bool) -> Option<u64> {
    Some(match (bytes.len(), signed) {
        (1, false) => bytes[0] as u64,
        (1, true) => bytes[0] as i8 as i64 as u64,
        (2, false) => u16::from_ne_bytes(bytes.try_into().ok()?) as u64,
        (2, true) => i16::from_ne_bytes(bytes.try_into().ok()?) as i64 as u64,
        (4, false) => u32::from_ne_bytes(bytes.try_into().ok()?) as u64,
        (4, true) => i32::from_ne_bytes(bytes.try_into().ok()?) as i64 as u64,
        (8, _) => u64::from_ne_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// Parses the `field:` lines of a format file.
fn parse_fields(text: &str) -> Result<Vec<Field>, FormatError> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with("field:"))
        .map(parse_field)
        .collect()
}

/// `field:TYPE NAME; offset:N; size:N; signed:N;` (`signed` is absent on old kernels).
fn parse_field(line: &str) -> Result<Field, FormatError> {
    let bad = || FormatError::BadField(line.to_owned());
    let mut parts = line.split(';').map(str::trim);
    let declaration = parts
        .next()
        .and_then(|part| part.strip_prefix("field:"))
        .map(str::trim)
        .ok_or_else(bad)?;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts.filter(|part| !part.is_empty()) {
        let (key, value) = part.split_once(':').ok_or_else(bad)?;
        let number = || value.trim().parse::<usize>().map_err(|_| bad());
        match key.trim() {
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = number()? != 0,
            _ => {}
        }
    }
    // The name is the last word of the declaration, without an array suffix; the type is the
    // rest, with the suffix (`char comm[16]` → `comm`, `char[16]`).
    let (type_part, name_part) = declaration
        .rsplit_once(char::is_whitespace)
        .ok_or_else(bad)?;
    let (name, array) = match name_part.find('[') {
        Some(bracket) => name_part.split_at(bracket),
        None => (name_part, ""),
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok(Field {
        name: name.to_owned(),
        type_name: format!("{}{array}", type_part.trim()),
        offset: offset.ok_or_else(bad)?,
        size: size.ok_or_else(bad)?,
        signed,
    })
}

fn value_of<'a>(text: &'a str, key: &'static str) -> Result<&'a str, FormatError> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .ok_or(FormatError::MissingKey(key))
}

/// An event's layout, from its `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    /// The event's type id: the value of `common_type` in its records.
    pub id: u32,
    /// Every field, the common ones (`common_type`, `common_pid`, …) included.
    pub fields: Vec<Field>,
}

impl EventFormat {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let name = value_of(text, "name")?.to_owned();
        let id = value_of(text, "ID")?;
        let id = id.parse().map_err(|_| FormatError::BadNumber {
            key: "ID",
            value: id.to_owned(),
        })?;
        Ok(Self {
            name,
            id,
            fields: parse_fields(text)?,
        })
    }

    pub fn field(&self, name: &str) -> Result<&Field, FormatError> {
        self.fields
            .iter()
            .find(|field| field.name == name)
            .ok_or_else(|| FormatError::MissingField(name.to_owned()))
    }
}

/// Where a ring-buffer page keeps its header fields and its data, from `events/header_page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeaderLayout {
    pub timestamp_offset: usize,
    pub timestamp_size: usize,
    pub commit_offset: usize,
    /// The commit word is a `local_t` (a `long`): 8 bytes on 64-bit kernels. It also holds
    /// the missed-events flags, and the missed-events count after the data is this wide.
    pub commit_size: usize,
    pub data_offset: usize,
    pub data_size: usize,
}

impl PageHeaderLayout {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let fields = parse_fields(text)?;
        let find = |name: &str| {
            fields
                .iter()
                .find(|field| field.name == name)
                .ok_or_else(|| FormatError::MissingField(name.to_owned()))
        };
        let (timestamp, commit, data) = (find("timestamp")?, find("commit")?, find("data")?);
        let check = |field: &Field, sizes: &[usize]| {
            if !sizes.contains(&field.size) {
                return Err(FormatError::BadLayout {
                    name: field.name.clone(),
                    offset: field.offset,
                    size: field.size,
                    why: "unexpected size",
                });
            }
            Ok(())
        };
        check(timestamp, &[8])?;
        check(commit, &[4, 8])?;
        let header_end = (timestamp.offset + timestamp.size).max(commit.offset + commit.size);
        if data.offset < header_end || data.size == 0 || data.size > 1 << 24 {
            return Err(FormatError::BadLayout {
                name: data.name.clone(),
                offset: data.offset,
                size: data.size,
                why: "data must follow the header and be at most 16 MiB",
            });
        }
        Ok(Self {
            timestamp_offset: timestamp.offset,
            timestamp_size: timestamp.size,
            commit_offset: commit.offset,
            commit_size: commit.size,
            data_offset: data.offset,
            data_size: data.size,
        })
    }

    /// The size of one page (sub-buffer), header included: what one read of
    /// `trace_pipe_raw` returns.
    pub fn page_size(&self) -> usize {
        self.data_offset + self.data_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ENTER: &str = "name: sys_enter\nID: 443\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;\n\n\
print fmt: \"NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)\", REC->id, REC->args[0]\n";

    const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n";

    #[test]
    fn parses_an_event_format() {
        let format = EventFormat::parse(SYS_ENTER).unwrap();
        assert_eq!(format.name, "sys_enter");
        assert_eq!(format.id, 443);
        assert_eq!(format.fields.len(), 6);
        let args = format.field("args").unwrap();
        assert_eq!(
            (args.type_name.as_str(), args.offset, args.size, args.signed),
            ("unsigned long[6]", 16, 48, false)
        );
        assert!(format.field("id").unwrap().signed);
        assert!(matches!(
            format.field("ret"),
            Err(FormatError::MissingField(name)) if name == "ret"
        ));
    }

    #[test]
    fn reads_fields_of_a_record() {
        let format = EventFormat::parse(SYS_ENTER).unwrap();
        let mut record = vec![0u8; 64];
        record[0..2].copy_from_slice(&443u16.to_ne_bytes());
        record[4..8].copy_from_slice(&(-5i32).to_ne_bytes());
        record[8..16].copy_from_slice(&39i64.to_ne_bytes());
        record[24..32].copy_from_slice(&0xdead_beefu64.to_ne_bytes());
        assert_eq!(
            format.field("common_type").unwrap().read_u64(&record),
            Some(443)
        );
        assert_eq!(
            format.field("common_pid").unwrap().read_i64(&record),
            Some(-5)
        );
        assert_eq!(format.field("id").unwrap().read_u64(&record), Some(39));
        let args = format.field("args").unwrap();
        assert_eq!(args.read_element(&record, 1, 8), Some(0xdead_beef));
        assert_eq!(args.read_element(&record, 6, 8), None);
        assert_eq!(args.read_u64(&record[..20]), None);
    }

    #[test]
    fn reads_data_loc_and_fixed_strings() {
        let data_loc = Field {
            name: "dst_path".into(),
            type_name: "__data_loc char[]".into(),
            offset: 0,
            size: 4,
            signed: false,
        };
        // Location: 5 bytes ("/abc" and its NUL) at offset 6.
        let mut record = ((5u32 << 16) | 6).to_ne_bytes().to_vec();
        record.extend_from_slice(b"xx/abc\0\0");
        assert_eq!(data_loc.read_str(&record), Some(&b"/abc"[..]));
        let bad = ((200u32 << 16) | 8).to_ne_bytes();
        assert_eq!(data_loc.read_str(&bad), None);
        let comm = Field {
            name: "comm".into(),
            type_name: "char[16]".into(),
            offset: 0,
            size: 16,
            signed: false,
        };
        assert_eq!(comm.read_str(b"sh\0garbage_here!"), Some(&b"sh"[..]));
    }

    #[test]
    fn parses_the_page_header() {
        let layout = PageHeaderLayout::parse(HEADER_PAGE).unwrap();
        assert_eq!(layout.commit_offset, 8);
        assert_eq!(layout.commit_size, 8);
        assert_eq!(layout.data_offset, 16);
        assert_eq!(layout.page_size(), 4096);
        assert!(PageHeaderLayout::parse("field: u64 timestamp;\toffset:0;\tsize:8;").is_err());
    }

    #[test]
    fn refuses_malformed_lines() {
        assert!(EventFormat::parse("name: x\nID: 1\n\tfield:int;\toffset:0;\tsize:4;\n").is_err());
        assert!(EventFormat::parse("name: x\nID: one\n").is_err());
        assert!(EventFormat::parse("ID: 1\n").is_err());
        assert!(
            EventFormat::parse("name: x\nID: 1\n\tfield:int a;\toffset:zero;\tsize:4;\n").is_err()
        );
    }
}
