//! Claim: changing one stored byte is detected, on read and by the startup check. Bytes are changed
//! through a raw RocksDB handle while the ledger is closed.

mod common;
use common::*;
use ledger::codec::RecordRef;
use ledger::store::{ALL_CFS, CF_EVENTS};
use ledger::types::{CustomerId, Position};
use ledger::{ErrorCode, Ledger, StartupCheck};

const EVENTS: u64 = 20;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path());
    let customer = CustomerId::new_random();
    rt().block_on(async {
        for i in 0..EVENTS {
            ledger.append(append_input(customer, "conv", vec![event(format!("message {i}").as_bytes())])).await.unwrap();
        }
        ledger.shutdown().await;
    });
    dir
}

/// Flips one byte of the stored record at `position`, at an offset chosen by `pick`.
fn flip(dir: &std::path::Path, position: u64, pick: impl Fn(&[u8]) -> usize) {
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), ALL_CFS).unwrap();
    let cf = db.cf_handle(CF_EVENTS).unwrap();
    let mut value = db.get_cf(cf, position.to_be_bytes()).unwrap().unwrap();
    let at = pick(&value);
    value[at] ^= 0x01;
    db.put_cf(cf, position.to_be_bytes(), value).unwrap();
}

fn ciphertext_offset(record: &[u8]) -> usize {
    let r = RecordRef::decode(record).unwrap();
    let header_len = r.header.len();
    1 + 4 + header_len + 4 + 12 + 3 // inside the ciphertext, past the nonce
}

fn header_offset(_record: &[u8]) -> usize {
    1 + 4 + 1 + 16 + 16 + 2 + 1 // inside the stream name
}

fn position_offset(record: &[u8]) -> usize {
    let r = RecordRef::decode(record).unwrap();
    1 + 4 + r.header.len() - 9 // last byte of the position in the committed header
}

fn version_offset(record: &[u8]) -> usize {
    let r = RecordRef::decode(record).unwrap();
    1 + 4 + r.header.len() - 1 // last byte of the stream version: not in the AAD, only the leaf covers it
}

fn leaf_offset(record: &[u8]) -> usize {
    record.len() - 1 // the stored leaf hash itself
}

fn read_all(ledger: &Ledger) -> Result<usize, ledger::LedgerError> {
    ledger.read_range(Position(0), Position(EVENTS), 1000, usize::MAX, &Default::default()).map(|(e, _)| e.len())
}

fn open_unchecked(dir: &std::path::Path) -> Ledger {
    let mut config = config(dir);
    config.tuning.quick_check_events = 0;
    Ledger::open(config).unwrap().0
}

#[test]
fn untampered_store_reads_and_passes_the_full_check() {
    let dir = setup();
    let mut config = config(dir.path());
    config.startup_check = StartupCheck::Full;
    let (ledger, report) = Ledger::open(config).unwrap();
    assert_eq!(report.events_checked, EVENTS);
    assert_eq!(read_all(&ledger).unwrap(), EVENTS as usize);
}

#[test]
fn tampering_is_detected_on_read() {
    for (what, pick) in [
        ("ciphertext", ciphertext_offset as fn(&[u8]) -> usize),
        ("header", header_offset),
        ("position", position_offset),
        ("stream version", version_offset),
        ("stored leaf", leaf_offset),
    ] {
        let dir = setup();
        flip(dir.path(), 5, pick);
        let ledger = open_unchecked(dir.path());
        let err = read_all(&ledger).expect_err(what);
        assert_eq!(err.code(), ErrorCode::IntegrityViolation, "{what}: {err}");
        assert!(err.to_string().contains("position 5"), "{what}: {err}");
        // The events before it still read.
        assert_eq!(ledger.read_range(Position(0), Position(5), 100, usize::MAX, &Default::default()).unwrap().0.len(), 5);
    }
}

#[test]
fn tampering_is_detected_by_the_startup_check() {
    // An old event: only the full check re-hashes it.
    let dir = setup();
    flip(dir.path(), 3, ciphertext_offset);
    let mut full = config(dir.path());
    full.startup_check = StartupCheck::Full;
    let err = Ledger::open(full).expect_err("full check must refuse");
    assert!(err.to_string().contains("position 3"), "{err}");

    // A recent event: the quick check re-hashes the newest events and refuses too.
    let dir = setup();
    flip(dir.path(), EVENTS - 1, header_offset);
    let err = Ledger::open(config(dir.path())).expect_err("quick check must refuse");
    assert!(err.to_string().contains("startup check failed"), "{err}");

    // A record rewritten with its leaf recomputed to match (the leaf is the level-0 node: it is
    // stored only in the record) is refused by the quick check too: the interior nodes above it
    // no longer match.
    let dir = setup();
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path().join("db"), ALL_CFS).unwrap();
        let cf = db.cf_handle(CF_EVENTS).unwrap();
        let record = db.get_cf(cf, 6u64.to_be_bytes()).unwrap().unwrap();
        let r = RecordRef::decode(&record).unwrap();
        let mut header = r.header.to_vec();
        let last = header.len() - 1;
        header[last] ^= 0x02;
        let leaf = ledger::merkle::leaf_hash(&header, &ledger::merkle::sha256(r.sealed));
        db.put_cf(cf, 6u64.to_be_bytes(), ledger::codec::encode_record(&header, r.sealed, &leaf)).unwrap();
    }
    let err = Ledger::open(config(dir.path())).expect_err("a consistent leaf rewrite must be refused");
    assert!(err.to_string().contains("does not match the events at positions 6..8"), "{err}");

    // A deleted event (truncation) is refused even by the quick check.
    let dir = setup();
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path().join("db"), ALL_CFS).unwrap();
        db.delete_cf(db.cf_handle(CF_EVENTS).unwrap(), (EVENTS - 1).to_be_bytes()).unwrap();
    }
    let err = Ledger::open(config(dir.path())).expect_err("truncation must be refused");
    assert!(err.to_string().contains("tree has 20 events"), "{err}");
}
