//! Ring-buffer pages, as `per_cpu/cpuN/trace_pipe_raw` returns them: one page per read.
//!
//! A page is a header (a timestamp and a `commit` word whose low 27 bits are the bytes of
//! committed data and whose top bits flag missed events) followed by a stream of entries.
//! Each entry starts with a 32-bit word: `type_len` (5 bits) and `time_delta` (27 bits):
//!
//! | type_len | entry                                                                   |
//! |----------|-------------------------------------------------------------------------|
//! | 0        | event; its length is in the next 32-bit word (+4, rounded up to 4)       |
//! | 1..=28   | event of `type_len * 4` bytes of data                                    |
//! | 29       | padding (a discarded event, or the rest of the page): `array[0]` bytes |
//! | 30       | time extend: `delta += array[0] << 27`                                  |
//! | 31       | absolute time stamp: `array[0] << 27 | delta`, top 5 bits kept          |
//!
//! Every entry's delta adds to the running timestamp, which starts at the page's.
use crate::format::PageHeaderLayout;

const COMMIT_MASK: u64 = (1 << 27) - 1;
const MISSED_EVENTS: u64 = 1 << 31;
const MISSED_STORED: u64 = 1 << 30;
const TS_SHIFT: u32 = 27;
/// Absolute time stamps lack the 5 most significant bits: they come from the running time.
const TS_MSB: u64 = 0xf8 << 56;

const TYPE_DATA_MAX: u32 = 28;
const TYPE_PADDING: u32 = 29;
const TYPE_TIME_EXTEND: u32 = 30;
const TYPE_TIME_STAMP: u32 = 31;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    #[error("page of {got} bytes is shorter than its {want}-byte header")]
    ShortHeader { got: usize, want: usize },
    #[error("page commits {commit} bytes of data; it has room for {room}")]
    BadCommit { commit: usize, room: usize },
    #[error("entry at data offset {offset} runs past the committed data")]
    Truncated { offset: usize },
    #[error("entry at data offset {offset} has a bad length {length}")]
    BadLength { offset: usize, length: u32 },
}

/// Events the kernel lost before this page (the reader was too slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissedEvents {
    None,
    /// Events were lost; the kernel stored how many.
    Count(u64),
    /// Events were lost; how many is unknown.
    Unknown,
}

/// One parsed page.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    pub timestamp: u64,
    pub missed: MissedEvents,
    /// The committed entries.
    data: &'a [u8],
}

/// One event on a page: its timestamp and its record (what the event's `format` describes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageEvent<'a> {
    pub timestamp: u64,
    pub record: &'a [u8],
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_word(bytes: &[u8], at: usize, size: usize) -> Option<u64> {
    let word = bytes.get(at..at.checked_add(size)?)?;
    Some(match size {
        4 => u32::from_ne_bytes(word.try_into().ok()?) as u64,
        8 => u64::from_ne_bytes(word.try_into().ok()?),
        _ => return None,
    })
}

impl<'a> Page<'a> {
    pub fn parse(layout: &PageHeaderLayout, page: &'a [u8]) -> Result<Self, PageError> {
        let short = PageError::ShortHeader {
            got: page.len(),
            want: layout.data_offset,
        };
        if page.len() < layout.data_offset {
            return Err(short);
        }
        let timestamp =
            read_word(page, layout.timestamp_offset, layout.timestamp_size).ok_or(short.clone())?;
        let commit = read_word(page, layout.commit_offset, layout.commit_size).ok_or(short)?;
        let size = (commit & COMMIT_MASK) as usize;
        let room = (page.len() - layout.data_offset).min(layout.data_size);
        if size > room {
            return Err(PageError::BadCommit { commit: size, room });
        }
        let data = &page[layout.data_offset..layout.data_offset + size];
        let missed = if commit & MISSED_EVENTS == 0 {
            MissedEvents::None
        } else if commit & MISSED_STORED != 0 {
            // The count is stored right after the data, as wide as the commit word.
            read_word(page, layout.data_offset + size, layout.commit_size)
                .map_or(MissedEvents::Unknown, MissedEvents::Count)
        } else {
            MissedEvents::Unknown
        };
        Ok(Self {
            timestamp,
            missed,
            data,
        })
    }

    /// The page's events in order. After an error the iterator ends.
    pub fn events(&self) -> Events<'a> {
        Events {
            data: self.data,
            offset: 0,
            timestamp: self.timestamp,
            failed: false,
        }
    }
}

pub struct Events<'a> {
    data: &'a [u8],
    offset: usize,
    timestamp: u64,
    failed: bool,
}

impl<'a> Events<'a> {
    fn fail(&mut self, error: PageError) -> Option<Result<PageEvent<'a>, PageError>> {
        self.failed = true;
        Some(Err(error))
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<PageEvent<'a>, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.offset < self.data.len() {
            let offset = self.offset;
            let truncated = PageError::Truncated { offset };
            let Some(header) = read_u32(self.data, offset) else {
                return self.fail(truncated);
            };
            let type_len = header & 0x1f;
            let delta = (header >> 5) as u64;
            // The 32-bit word after the header, for the entry types that have one.
            let array0 = read_u32(self.data, offset + 4);
            let (start, length) = match type_len {
                TYPE_PADDING => {
                    // A zero delta marks the end of the page's data.
                    if delta == 0 {
                        self.offset = self.data.len();
                        return None;
                    }
                    let Some(length) = array0 else {
                        return self.fail(truncated);
                    };
                    self.timestamp = self.timestamp.wrapping_add(delta);
                    self.offset = offset + 4 + length as usize;
                    continue;
                }
                TYPE_TIME_EXTEND | TYPE_TIME_STAMP => {
                    let Some(high) = array0 else {
                        return self.fail(truncated);
                    };
                    let value = ((high as u64) << TS_SHIFT).wrapping_add(delta);
                    self.timestamp = if type_len == TYPE_TIME_STAMP {
                        value | (self.timestamp & TS_MSB)
                    } else {
                        self.timestamp.wrapping_add(value)
                    };
                    self.offset = offset + 8;
                    continue;
                }
                0 => {
                    let Some(length) = array0 else {
                        return self.fail(truncated);
                    };
                    if length < 4 {
                        return self.fail(PageError::BadLength { offset, length });
                    }
                    let length = ((length - 4) as usize + 3) & !3;
                    (offset + 8, length)
                }
                1..=TYPE_DATA_MAX => (offset + 4, type_len as usize * 4),
                _ => unreachable!("type_len is 5 bits"),
            };
            let end = start + length;
            let Some(record) = self.data.get(start..end) else {
                return self.fail(truncated);
            };
            self.timestamp = self.timestamp.wrapping_add(delta);
            self.offset = end;
            return Some(Ok(PageEvent {
                timestamp: self.timestamp,
                record,
            }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PageHeaderLayout {
        PageHeaderLayout {
            timestamp_offset: 0,
            timestamp_size: 8,
            commit_offset: 8,
            commit_size: 8,
            data_offset: 16,
            data_size: 4080,
        }
    }

    /// Builds a page from entries (header word, payload).
    fn page(timestamp: u64, flags: u64, entries: &[(u32, &[u8])], trailer: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        for (header, payload) in entries {
            data.extend_from_slice(&header.to_ne_bytes());
            data.extend_from_slice(payload);
        }
        let mut page = timestamp.to_ne_bytes().to_vec();
        page.extend_from_slice(&(data.len() as u64 | flags).to_ne_bytes());
        page.extend_from_slice(&data);
        page.extend_from_slice(trailer);
        page.resize(4096, 0);
        page
    }

    fn header(type_len: u32, delta: u32) -> u32 {
        type_len | (delta << 5)
    }

    #[test]
    fn walks_every_entry_type() {
        let long_len = (4u32 + 40).to_ne_bytes();
        let mut long_payload = long_len.to_vec();
        long_payload.extend_from_slice(&[7u8; 40]);
        let bytes = page(
            1000,
            0,
            &[
                (header(2, 5), &[1, 2, 3, 4, 5, 6, 7, 8]),
                // A discarded event: padding with a delta; array[0] counts itself too.
                (
                    header(TYPE_PADDING, 3),
                    &[8, 0, 0, 0, 0xee, 0xee, 0xee, 0xee],
                ),
                (header(TYPE_TIME_EXTEND, 1), &2u32.to_ne_bytes()),
                (header(0, 2), &long_payload),
                (header(TYPE_TIME_STAMP, 9), &1u32.to_ne_bytes()),
                (header(1, 0), &[9, 9, 9, 9]),
            ],
            &[],
        );
        let page = Page::parse(&layout(), &bytes).unwrap();
        assert_eq!(page.missed, MissedEvents::None);
        let events: Vec<_> = page.events().map(Result::unwrap).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].timestamp, 1005);
        assert_eq!(events[0].record, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let extended = 1005 + 3 + ((2u64 << 27) + 1) + 2;
        assert_eq!(events[1].timestamp, extended);
        assert_eq!(events[1].record, &[7u8; 40][..]);
        assert_eq!(events[2].timestamp, (1u64 << 27) + 9);
        assert_eq!(events[2].record, &[9, 9, 9, 9]);
    }

    #[test]
    fn reports_missed_events() {
        let stored = page(
            0,
            MISSED_EVENTS | MISSED_STORED,
            &[(header(1, 0), &[0; 4])],
            &42u64.to_ne_bytes(),
        );
        let page_ = Page::parse(&layout(), &stored).unwrap();
        assert_eq!(page_.missed, MissedEvents::Count(42));
        let unknown = page(0, MISSED_EVENTS, &[], &[]);
        assert_eq!(
            Page::parse(&layout(), &unknown).unwrap().missed,
            MissedEvents::Unknown
        );
    }

    #[test]
    fn stops_at_end_of_page_padding() {
        let bytes = page(
            0,
            0,
            &[(header(1, 1), &[1; 4]), (header(TYPE_PADDING, 0), &[0; 4])],
            &[],
        );
        let events: Vec<_> = Page::parse(&layout(), &bytes).unwrap().events().collect();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn refuses_malformed_pages_without_panicking() {
        assert!(matches!(
            Page::parse(&layout(), &[0; 8]),
            Err(PageError::ShortHeader { .. })
        ));
        let mut too_much = page(0, 0, &[], &[]);
        too_much[8..16].copy_from_slice(&5000u64.to_ne_bytes());
        assert!(matches!(
            Page::parse(&layout(), &too_much),
            Err(PageError::BadCommit { .. })
        ));
        // An event whose length runs past the commit.
        let bytes = page(0, 0, &[(header(3, 0), &[0; 4])], &[]);
        let events: Vec<_> = Page::parse(&layout(), &bytes).unwrap().events().collect();
        assert!(matches!(
            events[..],
            [Err(PageError::Truncated { offset: 0 })]
        ));
        let bytes = page(0, 0, &[(header(0, 0), &2u32.to_ne_bytes())], &[]);
        let events: Vec<_> = Page::parse(&layout(), &bytes).unwrap().events().collect();
        assert!(matches!(events[..], [Err(PageError::BadLength { .. })]));
    }
}
