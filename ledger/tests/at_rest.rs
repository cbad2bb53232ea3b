//! Claim: no plaintext payload reaches the disk. Every file of the data directory (WAL, SST,
//! MANIFEST, OPTIONS, LOG, keyring, everything) is byte-scanned for a canary after the append,
//! after a flush and after a full compaction. A positive control shows the scan finds a string that
//! is stored in the clear by design (a metadata value), so a scan that finds nothing means something.

mod common;
use common::*;
use ledger::store::ALL_CFS;

#[test]
fn canary_payload_never_reaches_disk() {
    let dir = tempfile::tempdir().unwrap();
    let canary = b"CANARY-PAYLOAD-4f1d9c2e-secret-message-text";
    let control = "CONTROL-METADATA-77aa";
    let rt = rt();
    let customer = ledger::types::CustomerId::new_random();
    {
        let ledger = open(dir.path());
        rt.block_on(async {
            for i in 0..50 {
                let mut ev = event(&[&canary[..], format!(" #{i}").as_bytes()].concat());
                ev.metadata.insert("tag".into(), control.into());
                ledger.append(append_input(customer, "conv-1", vec![ev])).await.unwrap();
            }
            ledger.shutdown().await;
        });
    }
    // After the appends: the data sits in the WAL and memtables.
    assert!(!files_containing(dir.path(), control.as_bytes()).is_empty(), "positive control: the scan finds cleartext metadata");
    assert_eq!(files_containing(dir.path(), canary), Vec::<String>::new(), "canary in a file after append");

    // After a flush (SST files) and after a full compaction.
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path().join("db"), ALL_CFS).unwrap();
    for name in ALL_CFS {
        db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
    }
    assert_eq!(files_containing(dir.path(), canary), Vec::<String>::new(), "canary in a file after flush");
    for name in ALL_CFS {
        db.compact_range_cf(db.cf_handle(name).unwrap(), None::<&[u8]>, None::<&[u8]>);
    }
    drop(db);
    assert_eq!(files_containing(dir.path(), canary), Vec::<String>::new(), "canary in a file after compaction");
    assert!(!files_containing(dir.path(), control.as_bytes()).is_empty(), "positive control after compaction");

    // And the events still read back, decrypted, from the compacted store.
    let ledger = open(dir.path());
    let (events, _) = ledger
        .read_range(ledger::types::Position(0), ledger::types::Position(50), 100, usize::MAX, &Default::default())
        .unwrap();
    assert_eq!(events.len(), 50);
    match &events[7].payload {
        ledger::Payload::Available(p) => assert!(p.starts_with(canary)),
        other => panic!("expected a payload, got {other:?}"),
    }
}
