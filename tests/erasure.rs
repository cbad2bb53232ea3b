//! Erasure by crypto-shredding, end to end: nothing of the customer's plaintext comes back from any
//! API, their key's bytes are gone from every file of the data directory, an old backup is useless
//! once the KEK is rotated and the old version destroyed, downstream systems are notified through
//! a durable outbox, and residency holds for erasure and exports.

mod common;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proto::v1 as pb;
use proto::v1::privacy_client::PrivacyClient;
use tonic::Code;

const CFS: [&str; 9] = ledger::store::ALL_CFS;

async fn privacy(server: &Server) -> PrivacyClient<Conn> {
    PrivacyClient::new(server.channel().await).max_decoding_message_size(64 * 1024 * 1024)
}

fn erase_req(customer: &str, request_id: &str) -> pb::EraseCustomerRequest {
    pb::EraseCustomerRequest {
        customer_id: customer.into(),
        request_id: request_id.into(),
        legal_basis: "gdpr-art17-1a".into(),
        requested_by: "dpo-7".into(),
    }
}

/// The raw `keys` row of a customer, read from a stopped server's store.
fn key_row(data_dir: &Path, customer: &str) -> Option<Vec<u8>> {
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), data_dir.join("db"), CFS, false).unwrap();
    let id = uuid::Uuid::parse_str(customer).unwrap();
    db.get_cf(db.cf_handle("keys").unwrap(), id.as_bytes()).unwrap()
}


async fn status_until(server: &Server, request_id: &str, done: impl Fn(&pb::ErasureStatus) -> bool) -> pb::ErasureStatus {
    let mut p = privacy(server).await;
    for _ in 0..300 {
        let s = p
            .get_erasure_status(pb::GetErasureStatusRequest { request_id: request_id.into(), customer_id: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("erasure {request_id} did not reach the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_data_is_unreadable_through_every_api_and_gone_from_every_file() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let vkey = public_key(data.path());
    let (a, b) = (new_id(), new_id());
    let mut c = server.client().await;
    for i in 0..20 {
        c.append(append_req(&a, "conv-a", vec![proposed(format!("alpha-secret-{i}").as_bytes())])).await.unwrap();
        c.append(append_req(&b, "conv-b", vec![proposed(format!("bravo-message-{i}").as_bytes())])).await.unwrap();
    }
    drop(c);
    assert!(server.terminate().success());
    let row = key_row(data.path(), &a).expect("A has a key row");
    let wrapped = row[5..].to_vec();
    assert!(!files_containing(data.path(), &wrapped).is_empty(), "control: the wrapped key is on disk before erasure");

    let server = Server::start_in(data.path(), &[]);
    let mut p = privacy(&server).await;
    let first = p.erase_customer(erase_req(&a, "req-1")).await.unwrap().into_inner();
    let again = p.erase_customer(erase_req(&a, "req-1")).await.unwrap().into_inner();
    assert_eq!(first.certificate, again.certificate, "a repeat returns the same certificate");
    let fields = erasure::Certificate::verify(&first.certificate, &vkey).expect("the certificate verifies with the ledger's key");
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(field("customer"), a);
    assert_eq!(field("request"), "req-1");
    use sha2::Digest;
    assert_eq!(field("key-fingerprint"), format!("sha256:{}", hex::encode(sha2::Sha256::digest(&row))));
    let other = p.erase_customer(erase_req(&b, "req-1")).await.expect_err("a request id names one customer");
    assert_eq!(other.code(), Code::InvalidArgument);

    // Logical: no API returns A's plaintext; B is untouched.
    let mut c = server.client().await;
    let a_events = read_stream(&mut c, &a, "conv-a").await;
    assert_eq!(a_events.len(), 20, "headers stay");
    assert!(a_events.iter().all(|e| e.payload_state == pb::PayloadState::Erased as i32 && e.payload.is_empty()));
    let b_events = read_stream(&mut c, &b, "conv-b").await;
    assert_eq!(b_events[3].payload, b"bravo-message-3");
    let all = read_all(&mut c).await;
    assert!(all.iter().all(|e| !String::from_utf8_lossy(&e.payload).contains("alpha-secret")));
    let refused = c.append(append_req(&a, "conv-a", vec![proposed(b"again")])).await.expect_err("appends for an erased customer");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("erased"), "{}", refused.message());
    // The export and its proofs still verify, with no body.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    let o = server.cli(&["export", "--customer", &a, "--out", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("alpha-secret"));
    let o = ledgerd(&["verify", "--file", file.to_str().unwrap(), "--verifier-key", &vkey]);
    assert!(o.status.success(), "{}", text(&o));

    // Physical: once purged, the wrapped key is in no file of the data directory.
    let s = status_until(&server, "req-1", |s| s.purged_at.is_some()).await;
    assert!(s.unreadable_at.is_some() && s.certificate == first.certificate);
    let hits = files_containing(data.path(), &wrapped);
    assert!(hits.is_empty(), "the wrapped key is still in {hits:?}");
    drop((c, p));
    let mut server = server;
    assert!(server.terminate().success());
    let hits = files_containing(data.path(), &wrapped);
    assert!(hits.is_empty(), "after shutdown the wrapped key is in {hits:?}");
    assert!(key_row(data.path(), &a).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_backup_is_useless_once_the_kek_is_rotated_and_the_old_version_destroyed() {
    // The keyring lives outside the data directory, as the server's warning asks.
    let keys = tempfile::tempdir().unwrap();
    let keyring = keys.path().join("keyring.json");
    let data = tempfile::tempdir().unwrap();
    let flags = ["--keyring", keyring.to_str().unwrap()];
    let mut server = Server::start_in(data.path(), &flags);
    let (a, b) = (new_id(), new_id());
    let mut c = server.client().await;
    c.append(append_req(&a, "conv", vec![proposed(b"alpha-secret")])).await.unwrap();
    c.append(append_req(&b, "conv", vec![proposed(b"bravo-message")])).await.unwrap();
    drop(c);
    assert!(server.terminate().success());
    let backup = tempfile::tempdir().unwrap();
    copy_dir(data.path(), backup.path());

    let server = Server::start_in(data.path(), &flags);
    privacy(&server).await.erase_customer(erase_req(&a, "req-a")).await.unwrap();
    let o = server.cli(&["keys", "destroy", "--region", "eu", "--version", "1"]);
    assert!(!o.status.success(), "the current version cannot be destroyed: {}", text(&o));
    let o = server.cli(&["keys", "rotate", "--region", "eu"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("KEK version 2 is current"), "{}", text(&o));
    let o = server.cli(&["keys", "destroy", "--region", "eu", "--version", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = server.cli(&["keys", "list", "--region", "eu"]);
    assert!(text(&o).contains("KEK v2 (current)") && !text(&o).contains("v1"), "{}", text(&o));
    // The live node still reads B (rewrapped under v2).
    let mut c = server.client().await;
    assert_eq!(read_stream(&mut c, &b, "conv").await[0].payload, b"bravo-message");
    drop(c);

    // The backup, opened with everything the node still has (its keyring), cannot unwrap A's key.
    let (ring, _) = ledger::keys::Keyring::open_or_create(&keyring, &[ledger::types::Region::parse("eu", "r").unwrap()]).unwrap();
    assert_eq!(ring.versions(&ledger::types::Region::parse("eu", "r").unwrap()), vec![2]);
    let row = key_row(backup.path(), &a).expect("the backup still holds A's wrapped key");
    let (version, wrapped) = ledger::store::decode_key_record(&row).unwrap();
    assert_eq!(version, 1);
    let customer = ledger::types::CustomerId::parse(&a, "c").unwrap();
    let eu = ledger::types::Region::parse("eu", "r").unwrap();
    assert!(ring.unwrap(&eu, customer, 1, wrapped).is_err(), "KEK v1 is gone");
    assert!(ring.unwrap(&eu, customer, 2, wrapped).is_err(), "and v2 never wrapped it");
    // A server started on the backup with the node's keyring returns none of A's plaintext.
    drop(server);
    let restored = Server::start_in(backup.path(), &flags);
    let mut c = restored.client().await;
    match c.read_stream(pb::ReadStreamRequest { customer_id: a.clone(), stream: "conv".into(), max_count: 10, ..Default::default() }).await {
        Ok(s) => {
            let mut s = s.into_inner();
            while let Ok(Some(msg)) = s.message().await {
                assert!(msg.events.iter().all(|e| e.payload.is_empty()), "the backup decrypted an erased customer's event");
            }
        }
        Err(status) => assert!(!status.message().contains("alpha"), "{}", status.message()),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A downstream system: fails the first `failures` requests with 500, then answers 204. Records
/// every request's headers and body and the status it answered.
#[derive(Clone, Default)]
struct Downstream {
    seen: Arc<Mutex<Vec<(axum::http::HeaderMap, String, u16)>>>,
}

async fn serve_downstream(failures: usize) -> (String, Downstream) {
    let d = Downstream::default();
    let state = d.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut seen = state.seen.lock().unwrap();
                let status = if seen.len() < failures { 500 } else { 204 };
                seen.push((headers, body, status));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, d)
}

/// The Standard Webhooks check a receiver's library makes, written out independently.
fn standard_webhooks_valid(secret: &str, headers: &axum::http::HeaderMap, body: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", h("webhook-id"), h("webhook-timestamp"), body).as_bytes());
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_systems_are_notified_through_a_durable_outbox() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (crm_url, crm) = serve_downstream(3).await;
    let (dead_url, dead) = serve_downstream(usize::MAX).await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("ledgerd.toml");
    std::fs::write(
        &config,
        format!(
            "[erasure]\nattempts_max = 4\nbackoff_initial_ms = 300\nbackoff_max_ms = 600\n\
             [[erasure.downstream]]\nname = \"crm\"\nurl = \"{crm_url}\"\nsecret = \"{SECRET}\"\n\
             [[erasure.downstream]]\nname = \"warehouse\"\nurl = \"{dead_url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_in(data.path(), &flags);
    let a = new_id();
    server.client().await.append(append_req(&a, "conv", vec![proposed(b"alpha")])).await.unwrap();
    privacy(&server).await.erase_customer(erase_req(&a, "req-n")).await.unwrap();
    // Restart after the first failed attempt: the outbox resumes from its stored state.
    for _ in 0..100 {
        if !crm.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.terminate().success());
    let server = Server::start_in(data.path(), &flags);
    let s = status_until(&server, "req-n", |s| s.deliveries.iter().all(|d| d.state != pb::DeliveryState::Pending as i32)).await;
    let by_name = |n: &str| s.deliveries.iter().find(|d| d.downstream == n).unwrap().clone();
    let delivered = by_name("crm");
    assert_eq!(delivered.state, pb::DeliveryState::Delivered as i32);
    // Attempts are counted before they are made, so one cut short by the restart still counts.
    assert!(delivered.attempts >= 4, "three failures, then the acknowledgement: {delivered:?}");
    assert!(delivered.delivered_at.is_some());
    let dead_letter = by_name("warehouse");
    assert_eq!(dead_letter.state, pb::DeliveryState::DeadLetter as i32);
    assert_eq!(dead_letter.attempts, 4);
    assert_eq!(dead_letter.last_error, "http status 500");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = crm.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|(_, _, status)| *status < 300).count(), 1, "acknowledged exactly once");
    assert_eq!(seen.len(), 4, "no attempt after the acknowledgement");
    let id = seen[0].0.get("webhook-id").unwrap().clone();
    for (headers, body, _) in &seen {
        assert_eq!(headers.get("webhook-id").unwrap(), &id, "one webhook-id across attempts and restarts");
        assert!(standard_webhooks_valid(SECRET, headers, body), "signature");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["type"], "customer.erased");
        assert_eq!(json["data"]["customer_id"], a.as_str());
    }
    assert!(dead.seen.lock().unwrap().len() <= 4, "never more requests than counted attempts");

    // An operator retries the dead letter.
    let o = server.cli(&["erase", "--retry-dead-letters"]);
    assert!(o.status.success() && text(&o).contains("queued 1"), "{}", text(&o));
    status_until(&server, "req-n", |s| s.deliveries.iter().any(|d| d.downstream == "warehouse" && d.attempts >= 1 && d.attempts < 4)).await;
    assert!(!server.logs().contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "the secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_holds_for_erasure_and_exports() {
    let data = tempfile::tempdir().unwrap();
    let (eu1, eu2, us) = (new_id(), new_id(), new_id());
    let mut server = Server::start_in(data.path(), &[]);
    let vkey = public_key(data.path());
    let mut c = server.client().await;
    for (who, region) in [(&eu1, "eu"), (&us, "us"), (&eu2, "eu"), (&eu1, "eu")] {
        let mut req = append_req(who, "conv", vec![proposed(b"hello")]);
        req.region = region.into();
        c.append(req).await.unwrap();
    }
    drop(c);
    // A region export holds that region's customers only, and verifies.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eu.jsonl");
    let o = server.cli(&["export", "--region", "eu", "--out", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let customers: std::collections::BTreeSet<String> =
        lines.iter().filter(|l| l["type"] == "event").map(|l| l["customer_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(customers, [eu1.clone(), eu2.clone()].into_iter().collect());
    assert_eq!(lines.last().unwrap()["customers"], 2);
    let o = ledgerd(&["verify", "--file", file.to_str().unwrap(), "--verifier-key", &vkey]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(server.terminate().success());

    // A node that holds only eu refuses us erasure and exports.
    let server = Server::start_in(data.path(), &["--regions", "eu"]);
    let mut p = privacy(&server).await;
    let e = p.erase_customer(erase_req(&us, "req-us")).await.expect_err("us is not held here");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("region us is not served"), "{}", e.message());
    let e = p.export_customer(pb::ExportCustomerRequest { customer_id: us.clone() }).await.expect_err("us export");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = p.export_region(pb::ExportRegionRequest { region: "us".into() }).await.expect_err("us region export");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = p.get_erasure_status(pb::GetErasureStatusRequest { request_id: "req-us".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "a refused erasure leaves no record");
}

/// The export's JSON structure is pinned: each line type's fields and their JSON types. A change
/// here is a change of the format that DPOs and regulators receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_export_format_is_pinned() {
    let server = Server::start(&[]);
    let vkey = public_key(&server.data_dir);
    let a = new_id();
    let mut c = server.client().await;
    let mut ev = proposed(b"{\"text\":\"hola\"}");
    ev.metadata.insert("provider_message_id".into(), "wamid.1".into());
    c.append(append_req(&a, "conv-1", vec![ev, proposed(&[0xff, 0x00, 0x10])])).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let o = server.cli(&["export", "--customer", &a, "--out", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ledgerd(&["verify", "--file", file.to_str().unwrap(), "--verifier-key", &vkey]);
    assert!(o.status.success(), "{}", text(&o));
    let shape: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(|l| shape_of(&serde_json::from_str(l).unwrap())).collect();
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/export-customer.shape");
    let golden = std::fs::read_to_string(&golden_path).unwrap();
    assert_eq!(shape.join("\n"), golden.trim_end(), "the export format changed; if on purpose, bump the format and update {}", golden_path.display());
}

/// Field names and JSON types, with the values of `type`, `format`, `kind` and `payload_state`.
fn shape_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type" | "format" | "kind" | "payload_state", serde_json::Value::String(s)) => format!("{k}={s}"),
                    _ => format!("{k}:{}", shape_of(v)),
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(a) => format!("[{}]", a.first().map_or_else(String::new, shape_of)),
        serde_json::Value::String(_) => "string".into(),
        serde_json::Value::Number(_) => "number".into(),
        serde_json::Value::Bool(_) => "bool".into(),
        serde_json::Value::Null => "null".into(),
    }
}
