//! Read-ahead for a splice: the ranges a change map will make it read are known before it
//! starts, so extra readers (the source's clones: more file descriptors, more NBD
//! connections) fetch them in parallel, in disk order and a bounded distance ahead, while
//! the splice consumes them.
//!
//! Measured on the shared workload's nights over `qemu-nbd` (cold caches): the splice's
//! reads are short and scattered (a change every few MiB), so one synchronous reader
//! spends most of a night waiting for each reply in turn.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

use crate::source::DiskSource;

/// Size of one prefetched piece.
const PIECE_BYTES: u64 = 1 << 20;
/// How far ahead of the splice the readers may run (bounds memory).
const AHEAD_BYTES: u64 = 64 << 20;

#[derive(Default)]
struct State {
    /// Pieces by start: end, and the bytes once read (`None` while waiting or in flight).
    pieces: BTreeMap<u64, (u64, Option<Vec<u8>>)>,
    /// Pieces not yet taken by a reader, in order.
    queue: std::collections::VecDeque<u64>,
    /// Where the splice reads now: pieces before it are dropped, readers stay within
    /// [`AHEAD_BYTES`] of it.
    consumer: u64,
    stop: bool,
    /// Bytes the readers read, and bytes the splice took from them (for the log).
    fetched: u64,
    served: u64,
}

/// Ranges being read ahead, shared by the readers and the splice.
pub struct Prefetch {
    state: Mutex<State>,
    changed: Condvar,
}

impl Prefetch {
    /// Plans pieces covering `ranges` (any order, overlapping), clipped to `size`.
    pub fn new(mut ranges: Vec<(u64, u64)>, size: u64) -> Self {
        ranges.sort_unstable();
        let mut state = State::default();
        let mut covered = 0u64;
        for (s, e) in ranges {
            let (mut s, e) = (s.max(covered), e.min(size));
            while s < e {
                let end = (s + PIECE_BYTES).min(e);
                state.pieces.insert(s, (end, None));
                state.queue.push_back(s);
                s = end;
            }
            covered = covered.max(e);
        }
        Prefetch {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A reader that panicked leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One reader's loop: takes pieces in order and reads them with `source`. A piece
    /// that fails to read is dropped (the splice reads it itself and meets the error).
    pub fn run_reader(&self, source: &mut dyn DiskSource) {
        loop {
            let (start, end) = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    match st.queue.front().copied() {
                        None => return,
                        Some(s) if s < st.consumer.saturating_add(AHEAD_BYTES) => {
                            st.queue.pop_front();
                            let end = st.pieces.get(&s).map_or(s, |p| p.0);
                            break (s, end);
                        }
                        Some(_) => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            if start >= end {
                continue;
            }
            let mut buf = vec![0u8; (end - start) as usize];
            let mut done = 0;
            let ok = loop {
                if done == buf.len() {
                    break true;
                }
                match source.read_at(start + done as u64, &mut buf[done..]) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => done += n,
                }
            };
            let mut st = self.lock();
            if ok {
                st.fetched += end - start;
                if let Some(p) = st.pieces.get_mut(&start) {
                    p.1 = Some(buf);
                }
            } else {
                st.pieces.remove(&start);
            }
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Copies what the readers have of `[pos, pos + buf.len())` from its start: the bytes
    /// copied, 0 when `pos` is in no planned piece (read it directly). Waits for a piece
    /// still being read. Pieces before `pos` are dropped.
    pub fn take(&self, pos: u64, buf: &mut [u8]) -> usize {
        let mut st = self.lock();
        if pos > st.consumer {
            st.consumer = pos;
            let stale: Vec<u64> = st
                .pieces
                .range(..pos)
                .filter(|(_, p)| p.0 <= pos)
                .map(|(s, _)| *s)
                .collect();
            for s in &stale {
                st.pieces.remove(s);
            }
            // A piece that reaches past `pos` stays planned (and queued, if it was).
            st.queue.retain(|s| !stale.contains(s));
            self.changed.notify_all();
        }
        loop {
            let Some((&start, &(end, ref data))) = st.pieces.range(..=pos).next_back() else {
                return 0;
            };
            if end <= pos {
                return 0;
            }
            match data {
                Some(data) => {
                    let from = (pos - start) as usize;
                    let n = buf.len().min(data.len() - from);
                    buf[..n].copy_from_slice(&data[from..from + n]);
                    st.served += n as u64;
                    return n;
                }
                None if st.queue.contains(&start) => {
                    // Not started: reading it here is quicker than waiting for a reader.
                    st.queue.retain(|s| *s != start);
                    st.pieces.remove(&start);
                    return 0;
                }
                None => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Stops the readers (the splice is done or failed).
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        log::debug!("read-ahead: {} bytes read, {} used", st.fetched, st.served);
        drop(st);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl DiskSource for Mem {
        fn describe(&self) -> String {
            "mem".into()
        }
        fn size_bytes(&self) -> Option<u64> {
            Some(self.0.len() as u64)
        }
        fn next_data(&mut self, o: u64) -> Result<Option<(u64, u64)>, crate::source::SourceError> {
            Ok((o < self.0.len() as u64).then_some((o, self.0.len() as u64)))
        }
        fn read_at(&mut self, o: u64, buf: &mut [u8]) -> Result<usize, crate::source::SourceError> {
            let o = o as usize;
            let n = buf.len().min(self.0.len().saturating_sub(o));
            buf[..n].copy_from_slice(&self.0[o..o + n]);
            Ok(n)
        }
    }

    #[test]
    fn readers_fetch_planned_ranges_and_the_consumer_gets_the_same_bytes() {
        let data: Vec<u8> = (0..(20u32 << 20))
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let p = Prefetch::new(
            vec![(5 << 20, 9 << 20), (1 << 20, 2 << 20), (8 << 20, 12 << 20)],
            data.len() as u64,
        );
        std::thread::scope(|s| {
            for _ in 0..3 {
                let mut src = Mem(data.clone());
                let p = &p;
                s.spawn(move || p.run_reader(&mut src));
            }
            // Give the readers a head start, then consume as a splice would: what the
            // readers do not have is read directly.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut pos = 0u64;
            let mut got = 0u64;
            while pos < data.len() as u64 {
                let mut buf = vec![0u8; 300_000];
                let n = p.take(pos, &mut buf);
                if n == 0 {
                    pos += 65536;
                    continue;
                }
                assert_eq!(&buf[..n], &data[pos as usize..pos as usize + n]);
                got += n as u64;
                pos += n as u64;
            }
            assert!(
                got > 0 && got <= 8 << 20,
                "planned bytes came from the readers: {got}"
            );
            p.stop();
        });
    }
}
