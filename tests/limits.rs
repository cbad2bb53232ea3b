//! Abuse limits end to end: a principal over its call rate or its concurrent-call quota gets
//! RESOURCE_EXHAUSTED while another principal's appends go through, the refusals are in the
//! trail (coalesced), a streaming reader that stops reading is cut off with RESOURCE_EXHAUSTED,
//! oversized requests are refused, and `/metrics` wants an admin's or auditor's token.

mod common;
use common::*;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::ledger_client::LedgerClient;

async fn token(server: &Server, principal: &str, roles: &[&str]) -> String {
    let mut admin = AdminClient::new(server.channel().await);
    let req = pb::CreateTokenRequest { principal: principal.into(), roles: roles.iter().map(|r| r.to_string()).collect(), regions: vec![], ttl_seconds: 0 };
    admin.create_token(req).await.unwrap().into_inner().token
}

fn config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("ledgerd.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_quotas_is_refused_and_another_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "[routing]\nenabled = false\n[quotas]\ncalls_per_second = 2.0\nburst = 20.0\nconcurrent_calls = 3\n");
    let server = Server::start(&["--config", &cfg]);
    let (flood, quiet) = (token(&server, "flood", &["appender", "reader"]).await, token(&server, "quiet", &["appender"]).await);

    // 60 appends at once from one principal: at most the burst gets through.
    let customer = new_id();
    let mut calls = Vec::new();
    for _ in 0..60 {
        let mut c = LedgerClient::new(server.channel_as(Some(&flood)).await);
        let req = append_req(&customer, "flood", vec![proposed(b"{}")]);
        calls.push(tokio::spawn(async move { c.append(req).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned())) }));
    }
    let mut refused = Vec::new();
    for c in calls {
        if let Err(e) = c.await.unwrap() {
            refused.push(e);
        }
    }
    assert!(refused.len() >= 40, "{} of 60 refused", refused.len());
    assert!(refused.iter().all(|(code, _)| *code == tonic::Code::ResourceExhausted), "{refused:?}");
    // The other principal is untouched.
    let mut q = LedgerClient::new(server.channel_as(Some(&quiet)).await);
    for _ in 0..5 {
        q.append(append_req(&new_id(), "quiet", vec![proposed(b"{}")])).await.unwrap();
    }

    // Concurrent calls: three open subscriptions fill the quota; a fourth call is refused until
    // one closes (after the rate has refilled).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = LedgerClient::new(server.channel_as(Some(&flood)).await);
        let filter = Some(pb::EventFilter { customer_id: customer.clone(), ..Default::default() });
        open.push(c.subscribe(pb::SubscribeRequest { from_position: 0, filter }).await.unwrap().into_inner());
    }
    let mut c = LedgerClient::new(server.channel_as(Some(&flood)).await);
    let fourth = c.append(append_req(&customer, "flood", vec![proposed(b"{}")])).await.unwrap_err();
    assert_eq!(fourth.code(), tonic::Code::ResourceExhausted);
    assert!(fourth.message().contains("concurrent calls"), "{}", fourth.message());
    drop(open.pop());
    let mut admitted = false;
    for _ in 0..50 {
        if c.append(append_req(&customer, "flood", vec![proposed(b"{}")])).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(admitted, "a closed subscription frees its slot");

    // The trail has the refusals, coalesced: far fewer records than refusals, each counting.
    let mut admin = server.client().await;
    let records: Vec<ledger::access::AccessRecord> = read_all(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.stream == ledger::access::ACCESS_STREAM)
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .filter(|r: &ledger::access::AccessRecord| r.outcome == "ledger.quota_exceeded")
        .collect();
    assert!(!records.is_empty() && records.len() < refused.len(), "{} records", records.len());
    assert!(records.iter().all(|r| r.principal == "flood" && r.params.contains_key("refused_calls")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_off_and_oversized_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "[routing]\nenabled = false\n[timeouts]\nstream_stall_ms = 300\n[limits]\nrequest_bytes_max = 600000\n");
    let server = Server::start(&["--config", &cfg]);
    let mut client = server.client().await;
    // ~16 MB of events: far more than the HTTP/2 windows and the server's buffers hold.
    let payload = vec![b'x'; 2000];
    for _ in 0..40 {
        let events = (0..200).map(|_| proposed(&payload)).collect();
        client.append(append_req(&new_id(), "bulk", events)).await.unwrap();
    }
    let mut stream = client.read_all(pb::ReadAllRequest { from_position: 0, max_count: 0, filter: None }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.events.is_empty());
    // Stop reading for well past the stall timeout, then read on.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut events = first.events.len();
    let ended = loop {
        match stream.message().await {
            Ok(Some(m)) => events += m.events.len(),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = ended.expect("a stalled stream ends with an error, never as if complete");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(events < 8000, "{events} events arrived");
    assert!(server.logs().contains("ended a streaming response whose reader stopped reading"));

    // A request over request_bytes_max is refused before it reaches the service.
    let big = vec![b'y'; 700_000];
    let err = client.append(append_req(&new_id(), "big", vec![proposed(&big)])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let mut admin = AdminClient::new(server.channel().await);
    let err = admin
        .create_token(pb::CreateTokenRequest { principal: "p".repeat(700_000), roles: vec!["reader".into()], regions: vec![], ttl_seconds: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
}

#[test]
fn metrics_need_an_admin_or_auditor_token() {
    let server = Server::start(&[]);
    assert_eq!(server.http_get_as("/metrics", None).0, 401);
    assert_eq!(server.http_get_as("/metrics", Some("ldg_not_a_token")).0, 401);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reader, auditor) = rt.block_on(async { (token(&server, "r", &["reader"]).await, token(&server, "a", &["auditor"]).await) });
    assert_eq!(server.http_get_as("/metrics", Some(&reader)).0, 403);
    let (status, body) = server.http_get_as("/metrics", Some(&auditor));
    assert_eq!(status, 200);
    assert!(body.contains("ledger_committed_position"));
    // Health and readiness stay open for probes.
    assert_eq!(server.http_get_as("/healthz", None).0, 200);
    assert_eq!(server.http_get_as("/readyz", None).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_counted_in_a_few_records_not_one_each() {
    let server = Server::start(&[]);
    let mut forged = LedgerClient::new(server.channel_as(Some("ldg_forged")).await);
    for _ in 0..300 {
        let err = forged.append(append_req(&new_id(), "s", vec![proposed(b"{}")])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // One more after the second has passed is recorded, counting those in between.
    forged.append(append_req(&new_id(), "s", vec![proposed(b"{}")])).await.unwrap_err();
    let mut admin = server.client().await;
    let counts: Vec<u64> = read_all(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.stream == ledger::access::ACCESS_STREAM)
        .map(|e| serde_json::from_slice::<ledger::access::AccessRecord>(&e.payload).unwrap())
        .filter(|r| r.outcome == "ledger.unauthenticated" && r.action == "ledger.v1.Ledger/Append")
        .map(|r| r.params["refused_calls"].parse().unwrap())
        .collect();
    assert!(counts.len() >= 2 && counts.len() < 10, "{counts:?}");
    assert_eq!(counts[0], 1, "the first refusal is recorded at once");
    assert_eq!(counts.iter().sum::<u64>(), 301, "every refusal is counted: {counts:?}");
}
