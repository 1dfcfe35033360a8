//! A record ring buffer, readable from tokio: records are viewed in place (zero-copy) and
//! handed to a callback.
use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::SyscallRecord;

/// One record ring buffer, readable from tokio.
pub struct RecordRing {
    pub(super) ring: AsyncFd<RingBuf<MapData>>,
}

impl RecordRing {
    /// Waits until the kernel signals records, then hands every available one to `handle`.
    pub async fn drain_when_ready(
        &mut self,
        handle: impl FnMut(&SyscallRecord, &[u8]),
    ) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let handled = drain(guard.get_inner_mut(), handle);
        // tokio clears readiness only if no new edge arrived since it was observed, so a
        // record committed after the last `next()` still wakes the next call.
        guard.clear_ready();
        Ok(handled)
    }

    /// Hands every record available now to `handle`, without waiting (the periodic flush:
    /// records written without a wake-up are picked up here).
    pub fn drain_now(&mut self, handle: impl FnMut(&SyscallRecord, &[u8])) -> usize {
        drain(self.ring.get_mut(), handle)
    }
}

fn drain(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(&SyscallRecord, &[u8])) -> usize {
    let mut handled = 0;
    while let Some(item) = ring.next() {
        match SyscallRecord::view(&item) {
            Some((record, path)) => {
                handle(record, path);
                handled += 1;
            }
            None => tracing::warn!(
                len = item.len(),
                "ignoring a ring buffer item of unknown size"
            ),
        }
    }
    handled
}
