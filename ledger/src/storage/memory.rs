//! In-memory implementations of both seams, over simulated durable media, with injectable faults.
//! The simulator (`crate::sim`) runs the engine on them.
//!
//! The commit log's medium is a byte string of framed records (length, checksum, encoded batch),
//! as a write-ahead log file would hold. A commit appends one frame and is then durable; a crash
//! can leave a torn, partial last frame, which recovery detects by its length or checksum and
//! cuts off. The key store's medium is the set of rows as they are durable. A crash loses nothing
//! a call reported durable, and everything held only in memory.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
#[cfg(test)]
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use super::{Batch, CommitLog, Dir, KeyStore, Op, Space, Visit, WrappedKey};
use crate::error::LedgerError;
use crate::types::CustomerId;

/// What the next commit (or key change) does instead of succeeding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The write reaches the medium but the fsync fails: the call errs, and whether the change
    /// survives is `persisted`.
    FsyncFailure {
        /// Whether the change is on the medium after all.
        persisted: bool,
    },
    /// The process dies before anything is written.
    CrashBeforeWrite,
    /// The process dies during the write: only the first `keep` bytes of the frame (at least
    /// one, never all) reach the medium. Key changes, which are atomic, lose all of it.
    CrashTorn {
        /// Bytes of the frame that reach the medium.
        keep: usize,
    },
    /// The process dies right after the change is durable, before anyone is told.
    CrashAfterWrite,
}

impl Fault {
    /// Whether the fault kills the process.
    pub fn is_crash(self) -> bool {
        !matches!(self, Fault::FsyncFailure { .. })
    }
}

/// Faults queued by the simulator, shared by the log and the key store of one run. After a crash
/// every call fails until the media are reopened.
#[derive(Debug, Default)]
pub struct Faults {
    log: Mutex<VecDeque<Fault>>,
    keys: Mutex<VecDeque<Fault>>,
    crashed: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// Makes the next commit fail with `fault`.
    pub fn next_commit(&self, fault: Fault) {
        self.log.lock().expect("faults lock").push_back(fault);
    }
    /// Makes the next key-store change fail with `fault`.
    pub fn next_key_change(&self, fault: Fault) {
        self.keys.lock().expect("faults lock").push_back(fault);
    }
    /// Whether a crash fault has fired.
    pub fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::Acquire)
    }
    /// Forgets queued faults and the crash, for a process started again on the same media.
    pub fn reset(&self) {
        self.log.lock().expect("faults lock").clear();
        self.keys.lock().expect("faults lock").clear();
        self.crashed.store(false, std::sync::atomic::Ordering::Release);
    }
    fn take(&self, keys: bool) -> Result<Option<Fault>, LedgerError> {
        if self.crashed() {
            return Err(crashed());
        }
        let fault = if keys { self.keys.lock() } else { self.log.lock() }.expect("faults lock").pop_front();
        if fault.is_some_and(Fault::is_crash) {
            self.crashed.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(fault)
    }
}

fn crashed() -> LedgerError {
    LedgerError::Internal("the simulated process crashed".into())
}

fn fsync_failed() -> LedgerError {
    LedgerError::Io { path: "simulated medium".into(), source: std::io::Error::other("injected fsync failure") }
}

/// The commit log's durable bytes: frames of `u32` length, 8-byte checksum, encoded batch.
pub type LogMedium = Arc<Mutex<Vec<u8>>>;

/// The key store's durable rows.
pub type KeyMedium = Arc<Mutex<BTreeMap<CustomerId, WrappedKey>>>;

const FRAME_HEADER: usize = 12;

fn checksum(payload: &[u8]) -> [u8; 8] {
    crate::merkle::sha256(payload)[..8].try_into().expect("8 bytes")
}

/// What recovery found on a log medium.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole frames replayed.
    pub frames: usize,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: usize,
}

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; 8];

/// A commit log held in memory, with its frames on a simulated medium.
pub struct MemoryLog {
    maps: Mutex<Maps>,
    medium: LogMedium,
    faults: Arc<Faults>,
}

fn apply(maps: &mut Maps, batch: &Batch) {
    for op in batch.ops() {
        match op {
            Op::Put(s, k, v) => {
                maps[s.index()].insert(k.to_vec(), v.to_vec());
            }
            Op::Delete(s, k) => {
                maps[s.index()].remove(k);
            }
        }
    }
}

impl MemoryLog {
    /// Opens the log on `medium`: replays its whole frames and cuts off a torn last one.
    pub fn recover(medium: LogMedium, faults: Arc<Faults>) -> Result<(MemoryLog, Recovery), LedgerError> {
        let mut maps: Maps = Default::default();
        let mut report = Recovery::default();
        {
            let mut bytes = medium.lock().expect("medium lock");
            let mut at = 0usize;
            while at < bytes.len() {
                let rest = &bytes[at..];
                let whole = rest.len() >= FRAME_HEADER && {
                    let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    rest.len() >= FRAME_HEADER + len && rest[4..12] == checksum(&rest[FRAME_HEADER..FRAME_HEADER + len])
                };
                if !whole {
                    // Only the last frame can be torn: a write is appended after every earlier one
                    // was durable. Anything unreadable before the end would be corruption.
                    report.torn_bytes = rest.len();
                    bytes.truncate(at);
                    break;
                }
                let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                apply(&mut maps, &Batch::decode(&rest[FRAME_HEADER..FRAME_HEADER + len])?);
                report.frames += 1;
                at += FRAME_HEADER + len;
            }
        }
        Ok((MemoryLog { maps: Mutex::new(maps), medium, faults }, report))
    }

    fn frame(batch: &Batch) -> Vec<u8> {
        let payload = batch.encode();
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&checksum(&payload));
        frame.extend_from_slice(&payload);
        frame
    }
}

impl CommitLog for MemoryLog {
    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        let fault = self.faults.take(false)?;
        let frame = Self::frame(batch);
        let mut medium = self.medium.lock().expect("medium lock");
        match fault {
            None => {
                medium.extend_from_slice(&frame);
                drop(medium);
                apply(&mut self.maps.lock().expect("maps lock"), batch);
                Ok(())
            }
            Some(Fault::FsyncFailure { persisted }) => {
                if persisted {
                    medium.extend_from_slice(&frame);
                }
                Err(fsync_failed())
            }
            Some(Fault::CrashBeforeWrite) => Err(crashed()),
            Some(Fault::CrashTorn { keep }) => {
                medium.extend_from_slice(&frame[..keep.clamp(1, frame.len() - 1)]);
                Err(crashed())
            }
            Some(Fault::CrashAfterWrite) => {
                medium.extend_from_slice(&frame);
                Err(crashed())
            }
        }
    }

    fn get_with(&self, space: Space, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, LedgerError> {
        let maps = self.maps.lock().expect("maps lock");
        match maps[space.index()].get(key) {
            Some(v) => {
                f(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn multi_get(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        let maps = self.maps.lock().expect("maps lock");
        Ok(keys.iter().map(|k| maps[space.index()].get(*k).cloned()).collect())
    }

    fn scan(&self, space: Space, start: Option<&[u8]>, dir: Dir, f: &mut Visit<'_>) -> Result<(), LedgerError> {
        // Rows are copied out a page at a time and visited without the lock held, so a visitor
        // may read the log itself (decoding an event reads its customer).
        const PAGE: usize = 64;
        let mut from: Bound<Vec<u8>> = match start {
            Some(k) => Bound::Included(k.to_vec()),
            None => Bound::Unbounded,
        };
        loop {
            let page: Vec<(Vec<u8>, Vec<u8>)> = {
                let maps = self.maps.lock().expect("maps lock");
                let map = &maps[space.index()];
                let copy = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
                match dir {
                    Dir::Forward => map.range((from.clone(), Bound::Unbounded)).take(PAGE).map(copy).collect(),
                    Dir::Reverse => map.range((Bound::Unbounded, from.clone())).rev().take(PAGE).map(copy).collect(),
                }
            };
            let full = page.len() == PAGE;
            for (k, v) in &page {
                if f(k, v)?.is_break() {
                    return Ok(());
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if full => from = Bound::Excluded(k),
                _ => return Ok(()),
            }
        }
    }

    fn size_bytes(&self) -> u64 {
        self.medium.lock().expect("medium lock").len() as u64
    }

    fn close(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// A key store held in memory, each change atomic and durable on the simulated medium.
pub struct MemoryKeys {
    medium: KeyMedium,
    faults: Arc<Faults>,
}

impl MemoryKeys {
    /// Opens the key store on `medium`.
    pub fn open(medium: KeyMedium, faults: Arc<Faults>) -> MemoryKeys {
        MemoryKeys { medium, faults }
    }

    /// Applies `change` to the medium as the next fault allows.
    fn change(&self, change: impl FnOnce(&mut BTreeMap<CustomerId, WrappedKey>)) -> Result<(), LedgerError> {
        let fault = self.faults.take(true)?;
        let mut rows = self.medium.lock().expect("medium lock");
        match fault {
            None => {
                change(&mut rows);
                Ok(())
            }
            Some(Fault::FsyncFailure { persisted }) => {
                if persisted {
                    change(&mut rows);
                }
                Err(fsync_failed())
            }
            Some(Fault::CrashBeforeWrite | Fault::CrashTorn { .. }) => Err(crashed()),
            Some(Fault::CrashAfterWrite) => {
                change(&mut rows);
                Err(crashed())
            }
        }
    }
}

impl KeyStore for MemoryKeys {
    fn put_new(&self, keys: &[(CustomerId, WrappedKey)]) -> Result<(), LedgerError> {
        self.change(|rows| {
            for (c, k) in keys {
                rows.insert(*c, k.clone());
            }
        })
    }

    fn get(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError> {
        if self.faults.crashed() {
            return Err(crashed());
        }
        Ok(self.medium.lock().expect("medium lock").get(&customer).cloned())
    }

    fn destroy(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError> {
        let old = KeyStore::get(self, customer)?;
        if old.is_some() {
            self.change(|rows| {
                rows.remove(&customer);
            })?;
        }
        Ok(old)
    }

    fn rewrap(&self, changes: &[(CustomerId, WrappedKey, WrappedKey)]) -> Result<usize, LedgerError> {
        let mut count = 0;
        self.change(|rows| {
            for (c, old, new) in changes {
                if rows.get(c) == Some(old) {
                    rows.insert(*c, new.clone());
                    count += 1;
                }
            }
        })?;
        Ok(count)
    }

    fn list(&self, after: Option<CustomerId>, limit: usize) -> Result<Vec<(CustomerId, WrappedKey)>, LedgerError> {
        let rows = self.medium.lock().expect("medium lock");
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(rows.range((from, Bound::Unbounded)).take(limit).map(|(c, k)| (*c, k.clone())).collect())
    }

    fn purge(&self) -> Result<(), LedgerError> {
        // A destroyed row is gone from the medium at once: there is no older copy to remove.
        Ok(())
    }
}

#[cfg(test)]
// Tests commit on their own thread.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Batch {
        let mut b = Batch::default();
        b.put(Space::Events, &[n], &[n; 40]);
        b.put(Space::Meta, b"tree", &[n]);
        b
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_whole_frames_survive() {
        let medium = LogMedium::default();
        let faults = Arc::new(Faults::default());
        let (log, _) = MemoryLog::recover(medium.clone(), faults.clone()).unwrap();
        log.commit(&batch(1)).unwrap();
        log.commit(&batch(2)).unwrap();
        faults.next_commit(Fault::CrashTorn { keep: 20 });
        assert!(log.commit(&batch(3)).is_err());
        assert!(log.commit(&batch(4)).is_err(), "nothing is written after a crash");
        faults.reset();
        let (log, report) = MemoryLog::recover(medium.clone(), faults).unwrap();
        assert_eq!(report, Recovery { frames: 2, torn_bytes: 20 });
        let log: &dyn CommitLog = &log;
        assert_eq!(log.get(Space::Meta, b"tree").unwrap(), Some(vec![2]));
        assert_eq!(log.get(Space::Events, &[3]).unwrap(), None);
    }

    #[test]
    fn a_failed_fsync_may_or_may_not_persist_and_is_not_visible_before_recovery() {
        for persisted in [false, true] {
            let medium = LogMedium::default();
            let faults = Arc::new(Faults::default());
            let (log, _) = MemoryLog::recover(medium.clone(), faults.clone()).unwrap();
            faults.next_commit(Fault::FsyncFailure { persisted });
            assert!(log.commit(&batch(1)).is_err());
            let (again, _) = MemoryLog::recover(medium, faults).unwrap();
            let again: &dyn CommitLog = &again;
            assert_eq!(again.get(Space::Events, &[1]).unwrap().is_some(), persisted);
        }
    }

    #[test]
    fn scans_page_through_in_both_directions() {
        let (log, _) = MemoryLog::recover(LogMedium::default(), Arc::new(Faults::default())).unwrap();
        let mut b = Batch::default();
        for i in 0..200u16 {
            b.put(Space::Streams, &i.to_be_bytes(), &[]);
        }
        log.commit(&b).unwrap();
        let log: &dyn CommitLog = &log;
        let mut seen = Vec::new();
        log.scan(Space::Streams, Some(&10u16.to_be_bytes()), Dir::Forward, &mut |k, _| {
            seen.push(u16::from_be_bytes(k.try_into().unwrap()));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(seen, (10..200).collect::<Vec<_>>());
        seen.clear();
        log.scan(Space::Streams, Some(&150u16.to_be_bytes()), Dir::Reverse, &mut |k, _| {
            seen.push(u16::from_be_bytes(k.try_into().unwrap()));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(seen, (0..=150).rev().collect::<Vec<_>>());
    }
}
