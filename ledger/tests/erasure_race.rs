//! Erasure against the key cache, with the bad interleavings forced by hooks rather than hoped
//! for: a reader (or an appender) that loaded a customer's key before `erase_key` is parked at the
//! exact point where it would cache or use that key, the erasure runs to completion, and then the
//! reader goes on. After `erase_key` returns, no path may return the customer's plaintext, neither
//! that reader nor any later one (a key put back into the cache would serve every later read).
//! Paths: `read_stream` (ReadStream), `read_range` (ReadAll, exports of a region, views'
//! decrypting reads), `decode_batch` (Subscribe's live part) and `proven_events` (Replay and
//! customer exports). A second test hammers customers with unhooked readers and appenders while
//! they are erased.

mod common;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use common::*;
use ledger::types::*;
use ledger::{EventFilter, HookPoint, Hooks, Ledger, NodeCache, Payload, RecordedEvent};

const SECRET: &[u8] = b"the customer's secret message";

/// Parks the first thread that reaches `point` for `customer`, once armed.
#[derive(Default)]
struct Gate {
    armed: Mutex<Option<(HookPoint, CustomerId, Sender<()>, Receiver<()>)>>,
}

impl Gate {
    /// Arms the gate; returns (parked, release): `parked` fires when a thread is held, and a send
    /// on `release` lets it go.
    fn arm(&self, point: HookPoint, customer: CustomerId) -> (Receiver<()>, Sender<()>) {
        let (parked_tx, parked_rx) = channel();
        let (release_tx, release_rx) = channel();
        *self.armed.lock().unwrap() = Some((point, customer, parked_tx, release_rx));
        (parked_rx, release_tx)
    }

    fn hooks(self: &Arc<Self>) -> Hooks {
        let gate = self.clone();
        Hooks(Some(Arc::new(move |point, customer| {
            let mut armed = gate.armed.lock().unwrap();
            if armed.as_ref().is_some_and(|(p, c, _, _)| *p == point && *c == customer) {
                let (_, _, parked, release) = armed.take().unwrap();
                drop(armed);
                parked.send(()).unwrap();
                release.recv().unwrap();
            }
        })))
    }
}

fn open_hooked(dir: &std::path::Path, gate: &Arc<Gate>) -> Ledger {
    let mut config = config(dir);
    config.hooks = gate.hooks();
    Ledger::open(config).expect("open").0
}

fn plaintexts(events: &[RecordedEvent]) -> usize {
    events.iter().filter(|e| matches!(&e.payload, Payload::Available(p) if p.as_slice() == SECRET)).count()
}

#[derive(Clone, Copy, Debug)]
enum Path {
    ReadStream,
    ReadAll,
    Subscribe,
    Replay,
}

const PATHS: [Path; 4] = [Path::ReadStream, Path::ReadAll, Path::Subscribe, Path::Replay];

/// Reads the customer's events on `path`; `batch` is the live batch that carried them.
fn read(ledger: &Ledger, path: Path, customer: CustomerId, batch: &ledger::CommittedBatch) -> Vec<RecordedEvent> {
    let stream = StreamName::parse("conv", "s", &Default::default()).unwrap();
    match path {
        Path::ReadStream => ledger.read_stream(customer, &stream, None, false, 100).unwrap(),
        Path::ReadAll => {
            let filter = EventFilter { customer: Some(customer), ..Default::default() };
            ledger.read_range(Position(0), Position(ledger.committed_size()), 10_000, usize::MAX, &filter).unwrap().0
        }
        Path::Subscribe => ledger.decode_batch(batch, Position(0), &EventFilter::default()).unwrap(),
        Path::Replay => {
            let positions = ledger.customer_positions(customer, None, Position(0), Position(ledger.committed_size())).unwrap();
            let mut nodes = NodeCache::default();
            ledger.proven_events(&positions, ledger.committed_size(), &mut nodes).unwrap().into_iter().map(|p| p.event).collect()
        }
    }
}

/// Appends three secret events for a new customer and returns the live batch that carried them.
fn seed(ledger: &Ledger, rt: &tokio::runtime::Runtime, customer: CustomerId) -> Arc<ledger::CommittedBatch> {
    let mut batches = ledger.subscribe_batches();
    let events = (0..3).map(|_| event(SECRET)).collect();
    rt.block_on(ledger.append(append_input(customer, "conv", events))).unwrap();
    rt.block_on(batches.recv()).unwrap()
}

/// A reader parked at `point` holding a key from before the erasure; erase; release; check.
fn race_reader(point: HookPoint, path: Path, rounds: usize) {
    let rt = rt();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let customer = CustomerId::new_random();
        let batch = {
            let ledger = open_hooked(dir.path(), &gate);
            seed(&ledger, &rt, customer)
        };
        // Reopen so the cache is cold for `KeyUnwrapped` (the reader unwraps from the rows);
        // for `Decrypted` one read first warms it (the reader uses a cached key).
        let ledger = Arc::new(open_hooked(dir.path(), &gate));
        if point == HookPoint::Decrypted {
            assert_eq!(plaintexts(&read(&ledger, path, customer, &batch)), 3, "readable before the erasure");
        }
        let (parked, release) = gate.arm(point, customer);
        let reader = {
            let (ledger, batch) = (ledger.clone(), batch.clone());
            std::thread::spawn(move || read(&ledger, path, customer, &batch))
        };
        parked.recv().expect("the reader reached the hook");
        rt.block_on(ledger.erase_key(customer)).unwrap();
        release.send(()).unwrap();
        let raced = reader.join().unwrap();
        assert_eq!(raced.len(), 3, "{path:?} round {round}: the reader saw every event");
        assert_eq!(plaintexts(&raced), 0, "{path:?} at {point:?} round {round}: plaintext answered after erase_key returned");
        for later in PATHS {
            let events = read(&ledger, later, customer, &batch);
            assert_eq!(plaintexts(&events), 0, "{later:?} after a {path:?} race at {point:?}: the erased key came back from the cache");
            assert!(events.iter().all(|e| matches!(e.payload, Payload::Erased)));
        }
    }
}

#[test]
fn a_reader_that_unwrapped_the_key_before_erasure_cannot_cache_it() {
    for path in PATHS {
        race_reader(HookPoint::KeyUnwrapped, path, 3);
    }
}

#[test]
fn a_reader_that_decrypted_before_erasure_does_not_answer_the_plaintext() {
    for path in PATHS {
        race_reader(HookPoint::Decrypted, path, 3);
    }
}

#[test]
fn an_append_answered_before_erasure_cannot_cache_the_key() {
    let rt = rt();
    for round in 0..4 {
        // A new customer (the append brings a fresh key), and an existing one with a cold cache
        // (the append unwraps the stored key).
        for existing in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let gate = Arc::new(Gate::default());
            let customer = CustomerId::new_random();
            if existing {
                seed(&open_hooked(dir.path(), &gate), &rt, customer);
            }
            let ledger = Arc::new(open_hooked(dir.path(), &gate));
            let mut batches = ledger.subscribe_batches();
            let (parked, release) = gate.arm(HookPoint::AppendAnswered, customer);
            let appender = {
                let ledger = ledger.clone();
                std::thread::spawn(move || rt_block(ledger.append(append_input(customer, "conv", (0..3).map(|_| event(SECRET)).collect()))))
            };
            parked.recv().expect("the appender reached the hook");
            rt.block_on(ledger.erase_key(customer)).unwrap();
            release.send(()).unwrap();
            appender.join().unwrap().expect("the append was acknowledged before the erasure");
            let batch = rt.block_on(batches.recv()).unwrap();
            for path in PATHS {
                let events = read(&ledger, path, customer, &batch);
                assert!(events.len() >= 3, "{path:?}");
                assert_eq!(plaintexts(&events), 0, "round {round}, existing {existing}, {path:?}: the appender cached the erased key");
            }
        }
    }
}

fn rt_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Readers and appenders hammer customers, unhooked, while each is erased. Every read that
/// *starts* after `erase_key` returned must find no plaintext; appends after it are refused.
#[test]
fn hammering_readers_and_appenders_never_see_an_erased_customer() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(open(dir.path()));
    let rounds = 20;
    let violations = Arc::new(AtomicUsize::new(0));
    let reads_after = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    for _ in 0..rounds {
        let customer = CustomerId::new_random();
        let batch = seed(&ledger, &rt, customer);
        let erased = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..4 {
            let (ledger, batch, erased, stop, violations, reads_after, reads) =
                (ledger.clone(), batch.clone(), erased.clone(), stop.clone(), violations.clone(), reads_after.clone(), reads.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let after = erased.load(Ordering::Acquire);
                    if t == 3 {
                        let appended = rt_block(ledger.append(append_input(customer, "conv", vec![event(SECRET)])));
                        if after && appended.is_ok() {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let events = read(&ledger, PATHS[(t + i) % PATHS.len()], customer, &batch);
                        reads.fetch_add(1, Ordering::Relaxed);
                        if after {
                            reads_after.fetch_add(1, Ordering::Relaxed);
                            violations.fetch_add(plaintexts(&events), Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            }));
        }
        // Let the hammering run for a number of reads rather than a time.
        let before = reads.load(Ordering::Relaxed);
        while reads.load(Ordering::Relaxed) < before + 20 {
            std::thread::yield_now();
        }
        rt.block_on(ledger.erase_key(customer)).unwrap();
        erased.store(true, Ordering::Release);
        let seen = reads_after.load(Ordering::Relaxed);
        while reads_after.load(Ordering::Relaxed) < seen + 20 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
    }
    assert!(reads_after.load(Ordering::Relaxed) >= rounds * 20);
    assert_eq!(violations.load(Ordering::Relaxed), 0, "plaintext read, or an append accepted, after erase_key returned");
}

