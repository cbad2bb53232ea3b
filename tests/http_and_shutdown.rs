//! The HTTP port (health, readiness, Prometheus metrics) and a clean shutdown on SIGTERM with
//! appends in flight: every acknowledged append is there after restart.

mod common;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.append(append_req(&new_id(), "conv", vec![proposed(b"metrics canary payload")])).await.unwrap();
    assert_eq!(server.http_get("/healthz").0, 200);
    assert_eq!(server.http_get("/readyz").0, 200);
    let (status, body) = server.http_get("/metrics");
    assert_eq!(status, 200);
    for name in ["ledger_events_appended_total", "ledger_appends_total", "ledger_batch_events", "ledger_batch_commit_seconds", "ledger_wal_write_sync_seconds", "ledger_tree_size", "ledger_store_size_bytes"] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }
    assert!(!body.contains("metrics canary payload"));
    assert_eq!(server.http_get("/nope").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_appends_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut c = server.client().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let customer = new_id();
            loop {
                let ev = proposed(b"in flight");
                let id = ev.event_id.clone();
                match c.append(append_req(&customer, "conv", vec![ev])).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = server.terminate();
    for w in writers {
        w.await.unwrap();
    }
    assert!(status.success(), "exit status {status:?}\n{}", server.logs());
    assert!(server.logs().contains("ledger stopped"), "{}", server.logs());
    let server = Server::start_in(dir.path(), &["--startup-check", "full"]);
    let mut c = server.client().await;
    let stored: std::collections::HashSet<String> = read_all(&mut c).await.into_iter().map(|e| e.event_id).collect();
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    assert!(acked.iter().all(|id| stored.contains(id)), "an acknowledged append was lost on shutdown");
}

/// A client whose connection never closes (its runtime is blocked, so it cannot even answer the
/// server's GOAWAY) does not hold the server: it exits cleanly after the shutdown grace period.
#[tokio::test(flavor = "current_thread")]
async fn an_unresponsive_client_cannot_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let mut c = server.client().await;
    c.append(append_req(&new_id(), "conv", vec![proposed(b"x")])).await.unwrap();
    // `terminate` blocks this single-threaded runtime, so the client's connection task is frozen.
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", server.logs());
    assert!(server.logs().contains("grace period"), "{}", server.logs());
    assert!(server.logs().contains("ledger stopped"), "{}", server.logs());
    drop(c);
}
