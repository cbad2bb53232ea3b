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
