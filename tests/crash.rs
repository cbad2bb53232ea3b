//! Crash safety: `kill -9` the server at a random moment while concurrent appends run, restart
//! it, and find every acknowledged event with its content, positions contiguous from 0, and a root
//! that equals the RFC 9162 root of the stored leaves. Several rounds on the same data directory.

mod common;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // event id -> payload of every acknowledged event, across rounds.
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let rounds = 4;
    for round in 0..rounds {
        let mut server = Server::start_in(dir.path(), &["--startup-check", "full"]);
        let mut writers = Vec::new();
        for w in 0..6 {
            let (endpoint, token) = (server.endpoint(), server.admin_token());
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let Ok(channel) = tonic::transport::Channel::from_shared(endpoint).unwrap().connect().await else { return };
                let mut c = proto::v1::ledger_client::LedgerClient::new(tonic::service::interceptor::InterceptedService::new(channel, Bearer(Some(token))));
                let customer = new_id();
                for i in 0.. {
                    let events: Vec<_> = (0..1 + i % 3).map(|j| proposed(format!("r{round} w{w} i{i} j{j}").as_bytes())).collect();
                    let sent: Vec<(String, Vec<u8>)> = events.iter().map(|e| (e.event_id.clone(), e.payload.clone())).collect();
                    match c.append(append_req(&customer, &format!("conv-{w}"), events)).await {
                        Ok(_) => acked.lock().unwrap().extend(sent),
                        Err(_) => return, // the server died: this append was not acknowledged
                    }
                }
            }));
        }
        let ms = rand::thread_rng().gen_range(150..900);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        eprintln!("round {round}: killed after {ms} ms with {} events acknowledged so far", acked.lock().unwrap().len());
    }
    // Restart (with the full startup check) and verify.
    let server = Server::start_in(dir.path(), &["--startup-check", "full"]);
    let mut c = server.client().await;
    let all = read_all(&mut c).await;
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..all.len() as u64).collect::<Vec<_>>(), "positions contiguous from 0");
    let stored: HashMap<&str, &[u8]> = all.iter().map(|e| (e.event_id.as_str(), e.payload.as_slice())).collect();
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty(), "the test acknowledged something");
    for (id, payload) in acked.iter() {
        assert_eq!(stored.get(id.as_str()).copied(), Some(payload.as_slice()), "acknowledged event {id} lost or changed");
    }
    // The root after one more append equals the root of every stored leaf plus the new one.
    let out = c.append(append_req(&new_id(), "final", vec![proposed(b"final")])).await.unwrap().into_inner();
    let all = read_all(&mut c).await;
    let leaves: Vec<[u8; 32]> = all.iter().map(|e| e.leaf_hash.as_slice().try_into().unwrap()).collect();
    assert_eq!(out.tree_size, leaves.len() as u64);
    assert_eq!(root_of(&leaves).to_vec(), out.root_hash, "root matches the stored leaves");
}
