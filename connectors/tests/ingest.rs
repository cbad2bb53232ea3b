//! The webhook receivers in-process, over a real HTTP socket: a failed append is a 5xx (the
//! provider retries), statuses never go backwards in the derived view, concurrent first messages
//! from one new number make one customer, and fuzzed bodies never panic and never write.

use std::io::{Read, Write};
use std::sync::Arc;

use connectors::config::{ConnectorsConfig, Secret, WhatsAppAccount};
use connectors::http::Webhooks;
use connectors::Ingestor;
use hmac::Mac;
use ledger::{Ledger, LedgerConfig};
use proptest::prelude::*;

const SECRET: &str = "wa-app-secret";
const NUMBER: &str = "106540352242922";

fn config() -> ConnectorsConfig {
    ConnectorsConfig {
        whatsapp: vec![WhatsAppAccount {
            phone_number_id: NUMBER.into(),
            app_secret: Secret::new(SECRET),
            verify_token: Secret::new("verify-me"),
            region: "eu".into(),
            default_phone_region: "BR".into(),
            access_token: Secret::new("token"),
            api_base_url: "http://127.0.0.1:9".into(),
            messages_per_second: 80,
        }],
        ..Default::default()
    }
}

struct Harness {
    ledger: Ledger,
    webhooks: Arc<Webhooks>,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let regions = vec![ledger::types::Region::parse("eu", "r").unwrap()];
    let (ledger, _) = Ledger::open(LedgerConfig::new(dir.path(), regions)).unwrap();
    let webhooks = Webhooks::new(Arc::new(Ingestor::open(ledger.clone(), 3600).unwrap()), config()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = connectors::http::router(webhooks.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness { ledger, webhooks, addr, _dir: dir }
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` with the WhatsApp signature header; returns the status code.
async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sign(&body),
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    })
    .await
    .unwrap()
}

fn message(wa_id: &str, wamid: &str, ts: u64, text: &str) -> Vec<u8> {
    serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":NUMBER},
        "contacts":[{"profile":{"name":"N"},"wa_id":wa_id}],
        "messages":[{"from":wa_id,"id":wamid,"timestamp":ts.to_string(),"type":"text","text":{"body":text}}]}}]}]})
    .to_string()
    .into_bytes()
}

fn status(wa_id: &str, wamid: &str, ts: u64, status: &str) -> Vec<u8> {
    serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":NUMBER},
        "statuses":[{"id":wamid,"status":status,"timestamp":ts.to_string(),"recipient_id":wa_id}]}}]}]})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_is_a_5xx_so_the_provider_retries() {
    let h = harness().await;
    assert_eq!(post(h.addr, message("5511912345678", "wamid.A", 1_700_000_000, "hi")).await, 200);
    let size = h.ledger.committed_size();
    h.ledger.inject_write_fault();
    let code = post(h.addr, message("5511912345678", "wamid.B", 1_700_000_001, "second")).await;
    assert!(code >= 500, "a webhook whose append failed got {code}");
    assert_eq!(h.ledger.committed_size(), size, "nothing was written");
    // Poisoned: every later webhook is refused too, never acknowledged.
    assert!(post(h.addr, message("5511912345678", "wamid.C", 1_700_000_002, "third")).await >= 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_earlier_status_never_overrides_a_later_one() {
    let h = harness().await;
    let eu = ledger::types::Region::parse("eu", "r").unwrap();
    assert_eq!(post(h.addr, message("5511912345678", "wamid.in", 1_700_000_000, "hi")).await, 200);
    assert_eq!(post(h.addr, status("5511912345678", "wamid.out", 1_700_000_200, "read")).await, 200);
    assert_eq!(post(h.addr, status("5511912345678", "wamid.out", 1_700_000_100, "delivered")).await, 200);
    assert_eq!(post(h.addr, status("5511912345678", "wamid.out", 1_700_000_050, "sent")).await, 200);
    assert_eq!(h.webhooks.ingestor().message_status(&eu, "whatsapp", "wamid.out").unwrap().as_deref(), Some("read"));
    // Every status is an event (the history is kept); a redelivered one is not written twice.
    let before = h.ledger.committed_size();
    assert_eq!(post(h.addr, status("5511912345678", "wamid.out", 1_700_000_100, "delivered")).await, 200);
    assert_eq!(h.ledger.committed_size(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_messages_from_one_new_number_make_one_customer() {
    let h = harness().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        tasks.push(tokio::spawn(post(h.addr, message("5511987654321", &format!("wamid.c{i}"), 1_700_000_000 + i, "hello"))));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (events, _) = h.ledger.read_range(ledger::types::Position(0), ledger::types::Position(h.ledger.committed_size()), 1000, usize::MAX, &Default::default()).unwrap();
    let customers: std::collections::HashSet<_> = events.iter().map(|e| e.header.customer).collect();
    assert_eq!(events.len(), 16);
    assert_eq!(customers.len(), 1, "one customer for one number");
    let streams: std::collections::HashSet<_> = events.iter().map(|e| e.header.stream.clone()).collect();
    assert_eq!(streams.len(), 1, "messages within the gap share one conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_the_inactivity_gap_opens_a_new_conversation() {
    let h = harness().await;
    for (i, ts) in [1_700_000_000u64, 1_700_000_600, 1_700_000_600 + 3601].iter().enumerate() {
        assert_eq!(post(h.addr, message("5511912345678", &format!("wamid.g{i}"), *ts, "x")).await, 200);
    }
    let (events, _) = h.ledger.read_range(ledger::types::Position(0), ledger::types::Position(h.ledger.committed_size()), 1000, usize::MAX, &Default::default()).unwrap();
    let streams: Vec<_> = events.iter().map(|e| e.header.stream.clone()).collect();
    assert_eq!(streams[0], streams[1], "within an hour: same conversation");
    assert_ne!(streams[1], streams[2], "after the gap: a new one");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Signed garbage (and signed near-JSON) never panics the server and never writes.
    #[test]
    fn fuzzed_bodies_never_panic_and_never_write(body in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[{}\\[\\]\":,a-z0-9 ]{0,200}".prop_map(String::into_bytes),
        Just(br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{}}]}]}"#.to_vec()),
    ]) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness().await;
            let code = post(h.addr, body).await;
            prop_assert!(code == 400 || code == 404 || code == 200, "status {}", code);
            prop_assert_eq!(h.ledger.committed_size(), 0);
            Ok(())
        })?;
    }
}
