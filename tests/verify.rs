//! `ledgerd verify` against honest and adversarial servers. The auditor keeps only the verifier key
//! and a state file; a rewritten stored event, a forked history signed with the same key, and a
//! truncated log must each fail verification and leave the trusted state unchanged.

mod common;
use std::path::Path;
use std::process::Output;

use common::*;
use ledger::codec::{encode_record, RecordRef};
use ledger::merkle::{leaf_hash, sha256};

fn verify(server: &Server, vkey: &str, state: &Path, full: bool) -> Output {
    let state = state.to_str().unwrap();
    let mut args = vec!["verify", "--verifier-key", vkey, "--state", state];
    if full {
        args.push("--full");
    }
    server.cli(&args)
}

async fn append_some(server: &Server, n: usize, tag: &str) {
    let mut c = server.client().await;
    for i in 0..n {
        c.append(append_req(&new_id(), "conv", vec![proposed(format!("{tag} {i}").as_bytes())])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_growth_verifies_and_a_rewritten_event_fails() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = tempfile::tempdir().unwrap();
    let state = auditor.path().join("state.json");
    let mut server = Server::start_in(dir.path(), &[]);
    let vkey = public_key(dir.path());
    append_some(&server, 10, "first").await;
    let o = verify(&server, &vkey, &state, true);
    assert!(o.status.success(), "{}", text(&o));
    append_some(&server, 5, "more").await;
    let o = verify(&server, &vkey, &state, true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("extends the trusted head (size 10)"), "{}", text(&o));
    let trusted = std::fs::read(&state).unwrap();
    assert!(server.terminate().success());

    // The adversary rewrites event 3 (its stream version, which only the leaf covers) and rebuilds
    // the whole Merkle tree and the stored root to match, so the server's own startup and read
    // checks pass, and serves the rewritten history under the same key.
    {
        let cfs = ledger::store::ALL_CFS;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path().join("db"), cfs).unwrap();
        let events = db.cf_handle("events").unwrap();
        let record = db.get_cf(events, 3u64.to_be_bytes()).unwrap().unwrap();
        let r = RecordRef::decode(&record).unwrap();
        let mut header = r.header.to_vec();
        let last = header.len() - 1;
        header[last] ^= 0x07;
        let leaf = leaf_hash(&header, &sha256(r.sealed));
        db.put_cf(events, 3u64.to_be_bytes(), encode_record(&header, r.sealed, &leaf)).unwrap();
        let merkle = db.cf_handle("merkle").unwrap();
        let mut frontier = ledger::merkle::Frontier::default();
        for position in 0..15u64 {
            let rec = db.get_cf(events, position.to_be_bytes()).unwrap().unwrap();
            let leaf = RecordRef::decode(&rec).unwrap().leaf;
            frontier.push(leaf, |level, index, hash| db.put_cf(merkle, ledger::store::merkle_key(level, index), hash).unwrap());
        }
        let tree = ledger::store::TreeState { size: 15, root: frontier.root() };
        db.put_cf(db.cf_handle("meta").unwrap(), ledger::store::META_TREE, tree.encode()).unwrap();
    }
    let server = Server::start_in(dir.path(), &["--startup-check", "full"]);
    let o = verify(&server, &vkey, &state, true);
    assert!(!o.status.success(), "a rewritten event verified:\n{}", text(&o));
    assert!(text(&o).contains("log rewritten: same size 15"), "{}", text(&o));
    assert_eq!(std::fs::read(&state).unwrap(), trusted, "a failed run leaves the trusted state unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_or_truncated_log_signed_with_the_same_key_fails() {
    let auditor = tempfile::tempdir().unwrap();
    let state = auditor.path().join("state.json");
    let honest_dir = tempfile::tempdir().unwrap();
    let honest = Server::start_in(honest_dir.path(), &[]);
    let vkey = public_key(honest_dir.path());
    append_some(&honest, 8, "honest").await;
    let o = verify(&honest, &vkey, &state, false);
    assert!(o.status.success(), "{}", text(&o));
    drop(honest);

    // Another history, signed with a copy of the same key: first longer (a fork), then shorter.
    for (events, expect) in [(12, "not an extension"), (5, "log truncated")] {
        let fork_dir = tempfile::tempdir().unwrap();
        std::fs::copy(honest_dir.path().join("signing.key"), fork_dir.path().join("signing.key")).unwrap();
        let fork = Server::start_in(fork_dir.path(), &[]);
        assert_eq!(public_key(fork_dir.path()), vkey, "the fork signs with the same key");
        append_some(&fork, events, "forged").await;
        let o = verify(&fork, &vkey, &state, false);
        assert!(!o.status.success(), "a forked log verified:\n{}", text(&o));
        assert!(text(&o).contains(expect), "{}", text(&o));
    }
}
