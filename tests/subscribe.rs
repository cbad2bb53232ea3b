//! Subscriptions: catch-up then live, with no gap and no duplicate at the switch-over, while
//! concurrent writers run; and a subscriber that never reads does not hold writers back.

mod common;
use common::*;
use proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_sees_exactly_the_committed_sequence_while_writers_run() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    // History before the subscription starts.
    for i in 0..30 {
        c.append(append_req(&new_id(), "pre", vec![proposed(format!("pre {i}").as_bytes())])).await.unwrap();
    }
    let mut sub = c.subscribe(pb::SubscribeRequest { from_position: 0, filter: None }).await.unwrap().into_inner();
    // Writers run concurrently with the catch-up and the switch to live.
    let total_new = 8 * 40;
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut wc = server.client().await;
        writers.push(tokio::spawn(async move {
            let customer = new_id();
            for i in 0..40 {
                let events = vec![proposed(format!("w{w} e{i}").as_bytes())];
                wc.append(append_req(&customer, "live", events)).await.unwrap();
            }
        }));
    }
    // Plus one: the subscription's own access record, appended before it starts.
    let expected = 30 + total_new + 1;
    let mut seen = Vec::new();
    let mut went_live = false;
    while seen.len() < expected {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(60), sub.message()).await.unwrap().unwrap().unwrap();
        went_live |= msg.live;
        seen.extend(msg.events.into_iter().map(|e| (e.position, e.payload)));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(went_live, "the subscription switched to live");
    let positions: Vec<u64> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (0..expected as u64).collect::<Vec<_>>(), "no gap, no duplicate, in order");
    let committed: Vec<(u64, Vec<u8>)> = read_all(&mut c).await.into_iter().map(|e| (e.position, e.payload)).collect();
    assert_eq!(seen, committed, "exactly the committed sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_block_writers_and_resumes_from_storage() {
    // A live buffer of two batches, so the stalled subscriber is sure to fall behind it.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("ledgerd.toml");
    std::fs::write(&config, "[tuning]\nsubscription_buffer_batches = 2\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.client().await;
    // Subscribe and never read while a lot is written.
    let mut stalled = c.subscribe(pb::SubscribeRequest { from_position: 0, filter: None }).await.unwrap().into_inner();
    let customer = new_id();
    // About 12 MB: well past what HTTP/2 flow-control windows and socket buffers absorb, so the
    // server's send really blocks and the subscription falls behind the live buffer.
    let payload = vec![b'x'; 2000];
    for _ in 0..300 {
        let events = (0..20).map(|_| proposed(&payload)).collect();
        c.append(append_req(&customer, "bulk", events)).await.unwrap();
    }
    // Now read: everything arrives, in order, from storage where the buffer was exceeded.
    // 6,000 events plus the subscription's own access record at position 0.
    let total = 6001;
    let mut next = 0u64;
    while next < total {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(60), stalled.message()).await.unwrap().unwrap().unwrap();
        for e in msg.events {
            assert_eq!(e.position, next);
            next += 1;
        }
    }
    // The subscription really fell behind the live buffer and caught up from storage.
    let (_, metrics) = server.http_get("/metrics");
    let lags: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ledger_subscription_lags_total "))
        .unwrap_or_else(|| panic!("lag counter absent:\n{}", metrics.lines().filter(|l| l.contains("subscri") || l.contains("batches")).collect::<Vec<_>>().join("\n")))
        .trim()
        .parse()
        .unwrap();
    assert!(lags >= 1.0, "the subscriber never lagged, so this test did not exercise the fallback");
    // And it keeps following live after catching up.
    c.append(append_req(&customer, "bulk", vec![proposed(b"after")])).await.unwrap();
    let msg = loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(60), stalled.message()).await.unwrap().unwrap().unwrap();
        if !msg.events.is_empty() {
            break msg;
        }
    };
    assert_eq!(msg.events[0].position, total);
}
