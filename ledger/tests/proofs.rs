//! Proofs from the persisted Merkle nodes: for every tree size an append returned, the root can be
//! recomputed from the store, every event's inclusion proof verifies against that size's root, and
//! consistency proofs between any two returned sizes verify against the roots the appends returned
//! at the time. Arguments beyond the log are refused as out of range.

mod common;
use common::*;
use ledger::merkle::{verify_consistency, verify_inclusion};
use ledger::types::{CustomerId, Position};
use ledger::ErrorCode;

#[test]
fn proofs_verify_against_the_roots_appends_returned() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path());
    let customer = CustomerId::new_random();
    let rt = rt();
    // (tree size, root) as each append reported it.
    let mut heads = Vec::new();
    rt.block_on(async {
        for i in 0..40usize {
            let events = (0..1 + i % 4).map(|j| event(format!("{i}/{j}").as_bytes())).collect();
            let out = ledger.append(append_input(customer, &format!("c{}", i % 3), events)).await.unwrap();
            heads.push((out.tree_size, out.root));
        }
    });
    let size = ledger.committed_size();
    let (events, _) = ledger.read_range(Position(0), Position(size), 10_000, usize::MAX, &Default::default()).unwrap();
    let leaves: Vec<_> = events.iter().map(|e| e.leaf).collect();
    for &(n, root) in &heads {
        assert_eq!(ledger.root_at(n).unwrap(), root, "root at {n} recomputed from the store");
        for m in 0..n {
            let proof = ledger.inclusion_proof(Position(m), n).unwrap();
            assert!(verify_inclusion(m, n, &leaves[m as usize], &proof, &root), "inclusion of {m} in {n}");
        }
    }
    for &(m, old) in &heads {
        for &(n, new) in heads.iter().filter(|(n, _)| *n >= m) {
            let proof = ledger.consistency_proof(m, n).unwrap();
            assert!(verify_consistency(m, n, &old, &new, &proof), "consistency {m} -> {n}");
        }
    }
    for err in [
        ledger.inclusion_proof(Position(size), size).unwrap_err(),
        ledger.inclusion_proof(Position(0), size + 1).unwrap_err(),
        ledger.consistency_proof(0, size).unwrap_err(),
        ledger.consistency_proof(size, size + 1).unwrap_err(),
        ledger.root_at(0).unwrap_err(),
    ] {
        assert_eq!(err.code(), ErrorCode::OutOfRange, "{err}");
    }
}

/// On disk, each leaf is stored once (in its event's record): the Merkle space holds exactly the
/// complete subtrees of two leaves or more, n - popcount(n) of them. A store written by format 1
/// (which also kept level-0 rows) opens, is marked format 2, and proves as before; a newer format
/// is refused.
#[test]
fn leaves_are_stored_once_and_format_one_stores_still_open() {
    use ledger::store::{ALL_CFS, CF_EVENTS, CF_MERKLE, CF_META, META_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let customer = CustomerId::new_random();
    let rt = rt();
    {
        let ledger = open(dir.path());
        rt.block_on(async {
            for i in 0..37usize {
                ledger.append(append_input(customer, "c", vec![event(format!("{i}").as_bytes())])).await.unwrap();
            }
            ledger.shutdown().await;
        });
    }
    let n = 37u64;
    let raw = || rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path().join("db"), ALL_CFS).unwrap();
    {
        let db = raw();
        let keys: Vec<Vec<u8>> = db.iterator_cf(db.cf_handle(CF_MERKLE).unwrap(), rocksdb::IteratorMode::Start).map(|kv| kv.unwrap().0.to_vec()).collect();
        assert!(keys.iter().all(|k| k[0] > 0), "no level-0 row in the Merkle space");
        assert_eq!(keys.len() as u64, n - u64::from(n.count_ones()), "one row per complete subtree above the leaves");
        // Make it a format-1 store: level-0 rows beside the records, format 1.
        let events = db.cf_handle(CF_EVENTS).unwrap();
        for p in 0..n {
            let rec = db.get_cf(events, p.to_be_bytes()).unwrap().unwrap();
            let leaf = ledger::codec::RecordRef::decode(&rec).unwrap().leaf;
            db.put_cf(db.cf_handle(CF_MERKLE).unwrap(), ledger::store::merkle_key(0, p), leaf).unwrap();
        }
        db.put_cf(db.cf_handle(CF_META).unwrap(), META_FORMAT, 1u32.to_be_bytes()).unwrap();
    }
    {
        let ledger = open(dir.path());
        let root = ledger.root_at(n).unwrap();
        for m in 0..n {
            let proof = ledger.inclusion_proof(Position(m), n).unwrap();
            assert!(verify_inclusion(m, n, &ledger.leaf_at(Position(m)).unwrap(), &proof, &root), "inclusion of {m} in a format-1 store");
        }
        rt.block_on(async {
            ledger.append(append_input(customer, "c", vec![event(b"after the upgrade")])).await.unwrap();
            ledger.shutdown().await;
        });
    }
    let db = raw();
    let meta = db.cf_handle(CF_META).unwrap();
    assert_eq!(db.get_cf(meta, META_FORMAT).unwrap().unwrap(), ledger::store::STORE_FORMAT.to_be_bytes(), "marked format 2");
    assert!(db.get_cf(db.cf_handle(CF_MERKLE).unwrap(), ledger::store::merkle_key(0, n)).unwrap().is_none(), "no level-0 row after the upgrade");
    db.put_cf(meta, META_FORMAT, 3u32.to_be_bytes()).unwrap();
    drop(db);
    let err = ledger::Ledger::open(config(dir.path())).err().expect("format 3 is refused");
    assert!(err.to_string().contains("store format"), "{err}");
}
