//! A record ring buffer (`BPF_MAP_TYPE_RINGBUF`), readable from tokio: records are viewed in
//! place (zero-copy) and handed to a callback.
//!
//! Read here rather than with aya's `RingBuf`, which publishes the reader's position after
//! every record: the kernel reads that position twice for every record it writes (to reserve
//! room and to commit), so the cache line holding it crossed between the writing and the
//! reading CPU twice per record. This reader publishes it every [`PUBLISH_EVERY`] bytes and
//! when a pass ends (the kernel only needs it to know what room is free, and tracerd's
//! programs decide their wake-ups themselves). The layout is the kernel's
//! (`kernel/bpf/ringbuf.c`): a consumer page the reader writes, then a producer page and
//! the data pages, mapped twice in a row so a record never wraps.
use std::{
    io,
    num::NonZeroUsize,
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use tokio::io::unix::AsyncFd;
use tracer_common::SyscallRecord;

/// The reader's position is published after at most this many bytes of records (and never
/// less often than eight times a ring).
const PUBLISH_EVERY: usize = 64 << 10;

/// A record's header: its length, and these flags.
const HEADER_BYTES: usize = 8;
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;

/// One record ring buffer, readable from tokio.
pub struct RecordRing {
    ring: AsyncFd<RingFd>,
    /// The consumer page (read-write): the reader's position.
    consumer: Mapping,
    /// The producer page (the writer's position), then the data pages twice (read-only).
    producer: Mapping,
    page_size: usize,
    /// Ring bytes - 1.
    mask: usize,
    /// Where the reader is, and where the kernel was last told it is.
    position: usize,
    published: usize,
    publish_every: usize,
}

/// The ring's map, for tokio to wait on.
struct RingFd(MapData);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd().as_fd().as_raw_fd()
    }
}

impl RecordRing {
    /// Maps `map`, a ring of `ring_bytes`, and registers it with tokio (must be called
    /// inside a tokio runtime).
    pub fn new(map: MapData, ring_bytes: u32, page_size: usize) -> io::Result<Self> {
        let ring_bytes = ring_bytes as usize;
        if !ring_bytes.is_power_of_two() || !ring_bytes.is_multiple_of(page_size) {
            return Err(io::Error::other(format!(
                "a ring of {ring_bytes} bytes is not a power-of-two number of pages"
            )));
        }
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page_size, true, 0)?;
        let producer = Mapping::new(fd, page_size + 2 * ring_bytes, false, page_size)?;
        // SAFETY: the MapData owns the descriptor, which stays open and the same for as long
        // as it lives, and the AsyncFd owns the MapData.
        let ring =
            unsafe { AsyncFd::register_with_interest(RingFd(map), tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        let mut this = Self {
            ring,
            consumer,
            producer,
            page_size,
            mask: ring_bytes - 1,
            position: 0,
            published: 0,
            publish_every: PUBLISH_EVERY.min(ring_bytes / 8),
        };
        this.position = this.consumer_pos().load(Ordering::Acquire);
        this.published = this.position;
        Ok(this)
    }

    /// Waits until the kernel signals records, then hands every available one to `handle`.
    pub async fn drain_when_ready(
        &mut self,
        handle: impl FnMut(&SyscallRecord, &[u8]),
    ) -> io::Result<usize> {
        let mut guard = self.ring.readable().await?;
        // Cleared before the drain: a wake-up that comes during it makes the next call
        // drain again at once.
        guard.clear_ready();
        drop(guard);
        Ok(self.drain_now(handle))
    }

    /// Hands every record available now to `handle`, without waiting (the periodic flush:
    /// records written without a wake-up are picked up here).
    pub fn drain_now(&mut self, mut handle: impl FnMut(&SyscallRecord, &[u8])) -> usize {
        let mut handled = 0;
        loop {
            let written = self.producer_pos().load(Ordering::Acquire);
            while self.position < written {
                let len = match self.record() {
                    Record::Busy => {
                        // Reserved, not committed yet. The kernel wakes a reader whose
                        // published position is the record it commits (when the programs
                        // leave wake-ups to it): published first, then looked at again, so
                        // a commit in between is either seen here or wakes the next drain.
                        self.publish();
                        fence(Ordering::SeqCst);
                        if matches!(self.record(), Record::Busy) {
                            return handled;
                        }
                        continue;
                    }
                    Record::Discarded { len } => len,
                    Record::Data(bytes) => {
                        match SyscallRecord::view(bytes) {
                            Some((record, data)) => {
                                handle(record, data);
                                handled += 1;
                            }
                            None => tracing::warn!(
                                len = bytes.len(),
                                "ignoring a ring buffer item of unknown size"
                            ),
                        }
                        bytes.len()
                    }
                    Record::Corrupt { header } => {
                        // Not a length the kernel writes: where the next record starts is
                        // unknown, so what is there now is skipped (and said so).
                        tracing::error!(
                            header,
                            skipped_bytes = written - self.position,
                            "a record ring holds a record header it cannot hold; skipping to \
                             the kernel's position"
                        );
                        self.position = written;
                        self.publish();
                        continue;
                    }
                };
                self.advance(len);
            }
            // Caught up: the kernel learns where the reader is, and anything written
            // meanwhile is read too.
            self.publish();
            fence(Ordering::SeqCst);
            if self.producer_pos().load(Ordering::Acquire) == self.position {
                return handled;
            }
        }
    }

    /// The record at the reader's position.
    fn record(&self) -> Record<'_> {
        let offset = self.position & self.mask;
        let data = self.page_size;
        // SAFETY: the offset is inside the first copy of the data pages, and headers are
        // 8-byte aligned; the kernel writes the header with atomic operations.
        let header = unsafe { &*self.producer.at(data + offset).cast::<AtomicU32>() }
            .load(Ordering::Acquire);
        if header & BUSY_BIT != 0 {
            return Record::Busy;
        }
        let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
        if len + HEADER_BYTES > self.mask + 1 {
            return Record::Corrupt { header };
        }
        if header & DISCARD_BIT != 0 {
            return Record::Discarded { len };
        }
        let start = data + offset + HEADER_BYTES;
        // SAFETY: the record lies in the data pages' two copies (a record is no longer than
        // the ring), committed (the acquire load above), and the kernel does not reuse it
        // before the reader's position passes it.
        Record::Data(unsafe { std::slice::from_raw_parts(self.producer.at(start), len) })
    }

    /// Moves past a record of `len` bytes, telling the kernel every so often.
    fn advance(&mut self, len: usize) {
        self.position += (len + HEADER_BYTES).next_multiple_of(8);
        if self.position - self.published >= self.publish_every {
            self.publish();
        }
    }

    fn publish(&mut self) {
        if self.published != self.position {
            // Release: the records were read before their room is given back.
            self.consumer_pos().store(self.position, Ordering::Release);
            self.published = self.position;
        }
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the kernel's `unsigned long consumer_pos`.
        unsafe { &*self.consumer.at(0).cast::<AtomicUsize>() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: the producer page starts with the kernel's `unsigned long producer_pos`.
        unsafe { &*self.producer.at(0).cast::<AtomicUsize>() }
    }
}

/// What is at the reader's position.
enum Record<'a> {
    /// Reserved by a program that has not committed it yet.
    Busy,
    /// Given up by its program: `len` bytes to move past.
    Discarded {
        len: usize,
    },
    Data(&'a [u8]),
    /// A header with a length no record can have.
    Corrupt {
        header: u32,
    },
}

/// A shared mapping of part of the ring's map.
struct Mapping {
    start: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is plain shared memory; the ring reads and writes it through atomics
// and reads committed records only.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(
        fd: std::os::fd::BorrowedFd<'_>,
        len: usize,
        writable: bool,
        offset: usize,
    ) -> io::Result<Self> {
        let len = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("an empty mapping"))?;
        let protection = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a new shared mapping of the map's pages, unmapped on drop; nothing else
        // aliases it in this process.
        let start = unsafe {
            mmap(
                None,
                len,
                protection,
                MapFlags::MAP_SHARED,
                fd,
                offset as i64,
            )
        }?;
        Ok(Self {
            start: start.cast(),
            len,
        })
    }

    /// The address `offset` bytes in.
    fn at(&self, offset: usize) -> *const u8 {
        debug_assert!(offset < self.len.get());
        // SAFETY: in bounds (callers pass offsets inside the mapping).
        unsafe { self.start.as_ptr().add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`, and nothing borrows it once its ring is dropped.
        if let Err(err) = unsafe { munmap(self.start.cast(), self.len.get()) } {
            tracing::warn!(%err, "unmapping a record ring failed");
        }
    }
}
