//! Buffers reused across reads and requests.
//!
//! The sinks build request bodies of a MiB or more (a quarter of it log lines, the rest their
//! metadata). Allocated afresh for every request, they cost page faults each time and leave
//! glibc's heap fragmented: in the catch-up benchmark that was a fifth of loglet's peak memory
//! and a tenth of its CPU (docs/performance.md). A buffer handed out as [`Bytes`] returns to its
//! pool when the last slice of it is dropped, on whatever thread that happens. (The tailer's
//! 256 KiB read blocks were tried in a pool too: no measurable change, so they are not.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A buffer that stays free through a whole window of this length was not needed in it: a
/// burst's extra buffers go once it is over, and the pool keeps what steady load uses.
const TRIM_WINDOW: Duration = Duration::from_secs(10);

/// A bounded stack of free buffers.
pub struct BufferPool {
    free: Mutex<Free>,
    keep: usize,
    max_capacity: usize,
}

struct Free {
    bufs: Vec<Vec<u8>>,
    /// The fewest buffers free at any time since `since`.
    low: usize,
    since: Instant,
}

impl BufferPool {
    /// A pool keeping at most `keep` free buffers of at most `max_capacity` bytes each; a buffer
    /// grown past that (a huge batch, a long line) is freed rather than kept.
    pub fn new(keep: usize, max_capacity: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Free {
                bufs: Vec::with_capacity(keep),
                low: 0,
                since: Instant::now(),
            }),
            keep,
            max_capacity,
        })
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        self.take_at(capacity, Instant::now())
    }

    fn take_at(&self, capacity: usize, now: Instant) -> Vec<u8> {
        let reused = {
            let mut f = self.free();
            if now.saturating_duration_since(f.since) >= TRIM_WINDOW {
                // The coldest first: the stack's bottom.
                let unused = f.low.min(f.bufs.len());
                f.bufs.drain(..unused);
                f.low = f.bufs.len();
                f.since = now;
            }
            let b = f.bufs.pop();
            f.low = f.low.min(f.bufs.len());
            b
        };
        match reused {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Takes a buffer back.
    pub fn give(&self, mut b: Vec<u8>) {
        if b.capacity() > self.max_capacity || b.capacity() == 0 {
            return;
        }
        b.clear();
        let mut f = self.free();
        if f.bufs.len() < self.keep {
            f.bufs.push(b);
        }
    }

    /// Frees every buffer the pool holds (an idle sink's bodies: a MiB or more each, of no use
    /// until lines come again). Buffers out in use come back as usual.
    pub fn release_free(&self) {
        let free = std::mem::take(&mut self.free().bufs);
        drop(free);
    }

    /// The buffer as `Bytes`; it comes back to the pool when the last slice of it is dropped.
    pub fn freeze(self: &Arc<Self>, b: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf: b,
            pool: self.clone(),
        })
    }

    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.free().bufs.len()
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = BufferPool::new(2, 4 << 20);
        let mut b = pool.take(1 << 20);
        b.extend_from_slice(b"first request");
        let ptr = b.as_ptr();
        let sent = pool.freeze(b);
        assert_eq!(&sent[..], b"first request");
        let slice = sent.slice(6..);
        drop(sent);
        assert_eq!(pool.free_count(), 0, "still referenced by a slice");
        drop(slice);
        let again = pool.take(10);
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
    }

    #[test]
    fn release_free_empties_the_pool_and_it_fills_again() {
        let pool = BufferPool::new(2, 4 << 20);
        pool.give(Vec::with_capacity(1 << 20));
        pool.give(Vec::with_capacity(1 << 20));
        let out = pool.freeze(pool.take(1 << 20));
        pool.release_free();
        assert_eq!(pool.free_count(), 0);
        drop(out);
        assert_eq!(pool.free_count(), 1, "a buffer in use still comes back");
    }

    #[test]
    fn buffers_left_unused_for_a_window_are_freed_down_to_what_is_used() {
        let pool = BufferPool::new(6, 4 << 20);
        let t0 = Instant::now();
        // A burst had five out at once.
        for _ in 0..5 {
            pool.give(Vec::with_capacity(1 << 20));
        }
        // Then steady load: two out at a time, for two windows.
        let mut t = t0;
        while t < t0 + TRIM_WINDOW * 2 + Duration::from_secs(1) {
            let a = pool.take_at(1 << 20, t);
            let b = pool.take_at(1 << 20, t);
            pool.give(a);
            pool.give(b);
            t += Duration::from_millis(100);
        }
        assert_eq!(
            pool.free_count(),
            2,
            "the two in use are kept, the burst's extra freed"
        );
    }

    #[test]
    fn the_pool_keeps_no_more_than_asked_and_never_a_huge_buffer() {
        let pool = BufferPool::new(2, 1024);
        pool.give(Vec::with_capacity(1025));
        assert_eq!(pool.free_count(), 0);
        for _ in 0..5 {
            pool.give(Vec::with_capacity(64));
        }
        assert_eq!(pool.free_count(), 2);
    }
}
