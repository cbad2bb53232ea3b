//! Claim: a failed batch write poisons the store; it refuses writes (nothing is acknowledged) until
//! restart, and after restart the failed append is absent and everything before it is intact.

mod common;
use common::*;
use ledger::types::CustomerId;
use ledger::ErrorCode;

#[test]
fn failed_write_poisons_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let customer = CustomerId::new_random();
    let rt = rt();
    {
        let ledger = open(dir.path());
        rt.block_on(async {
            ledger.append(append_input(customer, "c", vec![event(b"before")])).await.unwrap();
            ledger.inject_write_fault();
            let err = ledger.append(append_input(customer, "c", vec![event(b"lost")])).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::StorePoisoned);
            assert!(!ledger.is_ready());
            let err = ledger.append(append_input(customer, "c", vec![event(b"after")])).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::StorePoisoned, "poisoned stays poisoned");
            // Reads keep working.
            assert_eq!(ledger.committed_size(), 1);
            ledger.shutdown().await;
        });
    }
    let ledger = open(dir.path());
    assert!(ledger.is_ready());
    assert_eq!(ledger.committed_size(), 1);
    rt.block_on(async {
        let out = ledger.append(append_input(customer, "c", vec![event(b"again")])).await.unwrap();
        assert_eq!(out.first_position.0, 1);
    });
}
