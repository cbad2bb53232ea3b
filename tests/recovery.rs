//! The server refuses to serve a store that fails the startup check, says what is wrong, and exits
//! non-zero; an intact store restarts and serves.

mod common;
use std::process::Command;

use common::*;

fn tamper_event(data_dir: &std::path::Path, position: u64) {
    let cfs = ledger::store::ALL_CFS;
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), data_dir.join("db"), cfs).unwrap();
    let cf = db.cf_handle("events").unwrap();
    let mut value = db.get_cf(cf, position.to_be_bytes()).unwrap().unwrap();
    let last = value.len() - 40; // inside the ciphertext
    value[last] ^= 0x80;
    db.put_cf(cf, position.to_be_bytes(), value).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_store_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut server = Server::start_in(dir.path(), &[]);
        let mut c = server.client().await;
        for i in 0..10 {
            c.append(append_req(&new_id(), "conv", vec![proposed(format!("m{i}").as_bytes())])).await.unwrap();
        }
        drop(c);
        assert!(server.terminate().success());
    }
    // Intact: restarts with the full check and serves everything.
    {
        let mut server = Server::start_in(dir.path(), &["--startup-check", "full"]);
        let mut c = server.client().await;
        assert_eq!(read_all(&mut c).await.len(), 10);
        drop(c);
        assert!(server.terminate().success());
    }
    tamper_event(dir.path(), 4);
    let out = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--startup-check", "full", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered store was served:\n{stderr}");
    assert!(stderr.contains("refusing to serve"), "{stderr}");
    assert!(stderr.contains("position 4"), "the message names what is wrong: {stderr}");
    assert!(!stderr.contains("ledger ready"), "{stderr}");
}
