//! Records in batches: what the backends deliver and what the event log stores. Each record
//! is kept as the kernel wrote it — a [`SyscallRecord`], then its captured data — packed back
//! to back in one buffer that every taker shares (`bytes::Bytes`: a batch sent to the event
//! log, the live feed and span export is one allocation, never copied per sink). Nothing is
//! allocated per event: events are made from a batch only where they are shown, and batch
//! buffers are reused ([`BufferPool`]).
use std::sync::Mutex;

use bytes::Bytes;
use tracer_common::{record_flags, SyscallRecord};

use super::Event;

/// Records of one session, in the order they were read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
    count: u32,
}

impl RecordBatch {
    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The packed records, as the event log stores them.
    pub fn packed(&self) -> &Bytes {
        &self.bytes
    }

    /// A batch from packed records (read back from the event log); `None` if they do not
    /// hold whole records.
    pub fn from_packed(bytes: Bytes) -> Option<Self> {
        let mut count = 0u32;
        let mut at = 0;
        while at < bytes.len() {
            at += stored_len(&bytes[at..])?;
            count += 1;
        }
        Some(Self { bytes, count })
    }

    /// The records with their captured data.
    pub fn iter(&self) -> Records<'_> {
        Records { rest: &self.bytes }
    }

    /// The records as events (allocates: for where events are shown, not on the hot path).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.iter().map(|(record, data)| Event::new(&record, data))
    }

    /// Takes the first `n` records (all of them if there are fewer) out of the batch.
    pub fn split_to(&mut self, n: usize) -> Self {
        let n = n.min(self.len());
        let at = self.iter_offsets().nth(n).unwrap_or(self.bytes.len());
        self.count -= n as u32;
        Self {
            bytes: self.bytes.split_to(at),
            count: n as u32,
        }
    }

    /// How many records from the front fit in `bytes`.
    pub fn records_within(&self, bytes: usize) -> usize {
        self.iter_offsets()
            .skip(1)
            .chain(std::iter::once(self.bytes.len()))
            .take_while(|&end| end <= bytes)
            .count()
    }

    /// The cgroup of each record, read in place.
    pub fn cgroup_ids(&self) -> impl Iterator<Item = u64> + '_ {
        const AT: usize = std::mem::offset_of!(SyscallRecord, cgroup_id);
        self.iter_offsets().map(|start| {
            let field = &self.bytes[start + AT..start + AT + 8];
            u64::from_ne_bytes(field.try_into().expect("8 bytes"))
        })
    }

    /// Where each record starts.
    fn iter_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let start = at;
            at += stored_len(self.bytes.get(at..)?)?;
            Some(start)
        })
    }
}

/// The records of a batch, copied out of it one at a time (records in a batch are not
/// aligned), with a view of their data.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = (SyscallRecord, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let len = stored_len(self.rest)?;
        let record = read_record(self.rest)?;
        let data = &self.rest[SyscallRecord::SIZE..len];
        self.rest = &self.rest[len..];
        Some((record, data))
    }
}

/// Packs records into batches, in buffers from the [`BufferPool`].
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buffer: Vec<u8>,
    count: u32,
}

impl BatchBuilder {
    /// Appends a record and its data. The stored record says how much data follows it.
    pub fn push(&mut self, record: &SyscallRecord, data: &[u8]) {
        let data_len = data.len().min(u16::MAX as usize) as u16;
        let has_data = data_len > 0;
        if self.buffer.capacity() == 0 {
            // Idle builders (a slot with no session, or released) hold no buffer.
            self.buffer = POOL.take(BUILDER_CAPACITY);
        }
        if record.data_len == data_len && (record.flags & record_flags::HAS_DATA != 0) == has_data {
            // As the kernel wrote it (the common case): copied once.
            self.buffer.extend_from_slice(record_bytes(record));
        } else {
            let mut record = *record;
            record.data_len = data_len;
            if has_data {
                record.flags |= record_flags::HAS_DATA;
            } else {
                record.flags &= !record_flags::HAS_DATA;
            }
            self.buffer.extend_from_slice(record_bytes(&record));
        }
        self.buffer.extend_from_slice(&data[..data_len as usize]);
        self.count += 1;
    }

    /// Gives an empty builder's buffer back to the pool (a builder that sees no records for
    /// a while holds none; it takes one again with its next record).
    pub fn release(&mut self) {
        if self.count == 0 && self.buffer.capacity() > 0 {
            POOL.give_back(std::mem::take(&mut self.buffer));
        }
    }

    /// Whether it holds a buffer (tests).
    #[cfg(test)]
    pub fn holds_buffer(&self) -> bool {
        self.buffer.capacity() > 0
    }

    /// Records pushed since the last [`Self::take`].
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes pushed since the last [`Self::take`].
    pub fn bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The records pushed so far, as a batch; the builder starts over in a buffer from the
    /// pool, and the batch's buffer goes back to it once every holder let go of the batch. A
    /// batch never holds more than twice its records' size.
    pub fn take(&mut self) -> RecordBatch {
        if self.count == 0 {
            return RecordBatch::default();
        }
        let count = std::mem::take(&mut self.count);
        if self.buffer.len() * 2 < self.buffer.capacity() {
            // A few records in a big buffer (the end of a drain pass, a quiet moment):
            // copied out, so what waits in a queue never holds much more memory than its
            // records take. Into a pooled buffer of their size unless they are only a few:
            // fresh memory of that size would come zeroed from the kernel every time.
            let bytes = if self.buffer.len() < SMALLEST_POOLED {
                Bytes::copy_from_slice(&self.buffer)
            } else {
                let mut small = POOL.take(self.buffer.len());
                small.extend_from_slice(&self.buffer);
                Bytes::from_owner(Pooled(small))
            };
            self.buffer.clear();
            return RecordBatch { bytes, count };
        }
        let full = std::mem::take(&mut self.buffer);
        RecordBatch {
            bytes: Bytes::from_owner(Pooled(full)),
            count,
        }
    }
}

/// Batch buffers that every holder let go of, for the next batches, by size class. Why not
/// fresh memory: memory new to the process is zeroed by the kernel on its first touch (with
/// transparent huge pages, 2 MiB at a time), and the allocator hands freed memory back to
/// the kernel soon after; measured, that zeroing took 14% of the daemon's CPU on the ftrace
/// path and 11% on the eBPF path (where most passes end with a part-filled batch that is
/// copied out), more than copying the records.
struct BufferPool {
    free: Mutex<Free>,
}

struct Free {
    /// Class `c` holds buffers of `SMALLEST_POOLED << c` bytes.
    classes: [Vec<Vec<u8>>; CLASSES],
    /// Their capacity, in all.
    bytes: usize,
}

/// A batch is delivered once it holds this many bytes of records (even in the middle of a
/// drain pass): its writer starts on it sooner, no batch comes near a session's queue
/// capacity, and batch buffers stay small enough for the pool to keep and reuse.
pub const BATCH_BYTES: usize = 256 << 10;
/// A builder's buffer: room for a full batch and one more record with the most data, so
/// it never grows.
const BUILDER_CAPACITY: usize = 2 * BATCH_BYTES;
/// Size classes from 4 KiB to 1 MiB; a smaller batch is copied into memory of its own.
const SMALLEST_POOLED: usize = 4 << 10;
const CLASSES: usize = 9;
/// The most the pool keeps, for the whole daemon: enough for the batches a session's queue
/// holds while its writer catches up after a burst (a bound per class kept too few: every
/// burst made fresh buffers again).
const POOL_BYTES: usize = 64 << 20;

static POOL: BufferPool = BufferPool::new();

impl BufferPool {
    const fn new() -> Self {
        Self {
            free: Mutex::new(Free {
                classes: [const { Vec::new() }; CLASSES],
                bytes: 0,
            }),
        }
    }

    /// An empty buffer with room for at least `capacity` bytes (and less than twice that,
    /// from 4 KiB up to 1 MiB): a reused one if the pool has one.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let Some(class) = (0..CLASSES).find(|&class| SMALLEST_POOLED << class >= capacity) else {
            return Vec::with_capacity(capacity);
        };
        let mut free = self.free();
        let reused = free.classes[class].pop();
        if let Some(buffer) = &reused {
            free.bytes -= buffer.capacity();
        }
        drop(free);
        reused.unwrap_or_else(|| Vec::with_capacity(SMALLEST_POOLED << class))
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        // Only a class's own size: a batch copied into a pooled buffer then never holds more
        // than twice its bytes (a builder's buffer that grew past its class is let go).
        if !capacity.is_power_of_two()
            || !(SMALLEST_POOLED..SMALLEST_POOLED << CLASSES).contains(&capacity)
        {
            return;
        }
        let class = (capacity / SMALLEST_POOLED).ilog2() as usize;
        buffer.clear();
        let mut free = self.free();
        if free.bytes + capacity <= POOL_BYTES {
            free.bytes += capacity;
            free.classes[class].push(buffer);
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A batch's buffer, back to the pool when the batch's last holder drops it.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        POOL.give_back(std::mem::take(&mut self.0));
    }
}

/// The bytes of a record as the kernel wrote it.
fn record_bytes(record: &SyscallRecord) -> &[u8] {
    // SAFETY: a repr(C) record of integers with no padding (tracer-common tests that), so
    // every byte of it is initialized.
    unsafe {
        std::slice::from_raw_parts(
            (record as *const SyscallRecord).cast::<u8>(),
            SyscallRecord::SIZE,
        )
    }
}

fn read_record(bytes: &[u8]) -> Option<SyscallRecord> {
    if bytes.len() < SyscallRecord::SIZE {
        return None;
    }
    // SAFETY: the length is checked; every bit pattern is a valid record, and the read
    // does not need alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SyscallRecord>()) })
}

/// The length of the record at the start of `bytes` with its data; `None` if `bytes` does
/// not hold all of it.
fn stored_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < SyscallRecord::SIZE {
        return None;
    }
    let field = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let flags = field(std::mem::offset_of!(SyscallRecord, flags));
    let data = if flags & record_flags::HAS_DATA != 0 {
        field(std::mem::offset_of!(SyscallRecord, data_len)) as usize
    } else {
        0
    };
    let len = SyscallRecord::SIZE + data;
    (bytes.len() >= len).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::samples;

    fn batch_of(tids: std::ops::Range<u32>) -> RecordBatch {
        let mut builder = BatchBuilder::default();
        for tid in tids {
            // Odd threads carry data.
            let data = vec![7u8; (tid % 2 * 24) as usize];
            builder.push(&samples::record(39, 1, tid, 7), &data);
        }
        builder.take()
    }

    #[test]
    fn records_come_back_as_pushed_with_their_data() {
        let batch = batch_of(0..5);
        assert_eq!(batch.len(), 5);
        let read: Vec<(u32, usize)> = batch
            .iter()
            .map(|(record, data)| (record.tid, data.len()))
            .collect();
        assert_eq!(read, vec![(0, 0), (1, 24), (2, 0), (3, 24), (4, 0)]);
        assert_eq!(batch.cgroup_ids().collect::<Vec<_>>(), vec![7; 5]);
        let first_two = 2 * SyscallRecord::SIZE + 24;
        assert_eq!(batch.records_within(first_two), 2);
        assert_eq!(batch.records_within(first_two - 1), 1);
        assert_eq!(batch.records_within(usize::MAX), 5);
        let again = RecordBatch::from_packed(batch.packed().clone()).unwrap();
        assert_eq!(again, batch);
    }

    #[test]
    fn a_torn_batch_is_refused() {
        let batch = batch_of(0..3);
        let torn = batch.packed().slice(..batch.packed().len() - 1);
        assert!(RecordBatch::from_packed(torn).is_none());
    }

    #[test]
    fn split_to_takes_whole_records_from_the_front() {
        let mut batch = batch_of(0..5);
        let front = batch.split_to(2);
        let tids = |batch: &RecordBatch| batch.iter().map(|(r, _)| r.tid).collect::<Vec<_>>();
        assert_eq!(tids(&front), vec![0, 1]);
        assert_eq!(tids(&batch), vec![2, 3, 4]);
        assert_eq!(batch.split_to(10).len(), 3);
        assert!(batch.is_empty());
    }

    #[test]
    fn the_builder_starts_over_after_take() {
        let mut builder = BatchBuilder::default();
        builder.push(&samples::record(39, 1, 1, 7), &[]);
        let first = builder.take();
        assert!(builder.is_empty());
        builder.push(&samples::record(39, 1, 2, 7), &[]);
        assert_eq!(first.iter().next().unwrap().0.tid, 1);
        assert_eq!(builder.take().iter().next().unwrap().0.tid, 2);
        assert!(builder.take().is_empty());
    }

    #[test]
    fn a_small_batch_does_not_hold_a_big_buffer() {
        let mut builder = BatchBuilder::default();
        builder.push(&samples::record(39, 1, 1, 7), &[]);
        let small = builder.take();
        // The builder's buffer (512 KiB) stays with it; the batch has its own copy.
        assert_eq!(small.packed().len(), SyscallRecord::SIZE);
        assert!(builder.buffer.capacity() >= BUILDER_CAPACITY);
        assert_eq!(small.iter().next().unwrap().0.tid, 1);
    }

    #[test]
    fn the_pool_hands_out_buffers_by_size_class() {
        let pool = BufferPool::new();
        // Fresh: the class's size, at least what was asked and less than twice it.
        assert_eq!(pool.take(5_000).capacity(), 8 << 10);
        assert_eq!(pool.take(1).capacity(), 4 << 10);
        // Kept in its class, and handed out again empty.
        let mut kept = Vec::with_capacity(8 << 10);
        kept.push(1u8);
        let at = kept.as_ptr();
        pool.give_back(kept);
        assert_eq!(pool.take(9_000).capacity(), 16 << 10);
        let reused = pool.take(5_000);
        assert_eq!((reused.as_ptr(), reused.len()), (at, 0));
        // A buffer that is not a class's size is let go: a reused buffer is always less
        // than twice what was asked.
        pool.give_back(Vec::with_capacity(12 << 10));
        assert!(pool.free().classes.iter().all(Vec::is_empty));
        // Bigger than the largest class: neither pooled nor rounded.
        assert_eq!(pool.take(3 << 20).capacity(), 3 << 20);
        pool.give_back(Vec::with_capacity(3 << 20));
        assert!(pool.free().classes.iter().all(Vec::is_empty));
        assert_eq!(pool.free().bytes, 0);
        // At most POOL_BYTES in all.
        for _ in 0..POOL_BYTES / (1 << 20) + 3 {
            pool.give_back(Vec::with_capacity(1 << 20));
        }
        pool.give_back(Vec::with_capacity(4 << 10));
        assert_eq!(pool.free().classes[8].len(), POOL_BYTES / (1 << 20));
        assert!(pool.free().classes[0].is_empty());
        assert_eq!(pool.free().bytes, POOL_BYTES);
        pool.take(1 << 20);
        assert_eq!(pool.free().bytes, POOL_BYTES - (1 << 20));
    }

    #[test]
    fn a_released_builder_holds_no_buffer_until_its_next_record() {
        let mut builder = BatchBuilder::default();
        builder.push(&samples::record(39, 1, 1, 7), &[]);
        // Records waiting: the buffer stays.
        builder.release();
        assert_eq!(builder.len(), 1);
        let _ = builder.take();
        builder.release();
        assert_eq!(builder.buffer.capacity(), 0);
        builder.push(&samples::record(39, 1, 2, 7), &[]);
        assert!(builder.buffer.capacity() >= BUILDER_CAPACITY);
        assert_eq!(builder.take().iter().next().unwrap().0.tid, 2);
    }

    #[test]
    fn a_part_filled_batch_is_copied_into_a_buffer_of_its_size() {
        let mut builder = BatchBuilder::default();
        let records = 100;
        for tid in 0..records {
            builder.push(&samples::record(39, 1, tid, 7), &[]);
        }
        let batch = builder.take();
        let len = records as usize * SyscallRecord::SIZE;
        assert_eq!(batch.packed().len(), len);
        assert_eq!(batch.len(), records as usize);
        assert!(builder.buffer.capacity() >= BUILDER_CAPACITY);
    }
}
