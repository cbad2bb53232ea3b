//! Audited replay end to end: `ledgerd audit replay` writes a proof file that `ledgerd verify
//! --file` checks offline with the verifier key alone; every kind of tampering with the file fails;
//! verification still works once the customer's key is destroyed; and every decrypting read leaves
//! an access record in the audit stream, which carries no payload text.

mod common;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;
use ledger::access::{AccessRecord, ACCESS_STREAM, SYSTEM_CUSTOMER};
use proto::v1 as pb;
use proto::v1::audit_client::AuditClient;

fn replay_to(server: &Server, customer: &str, stream: Option<&str>, out: &Path) -> Output {
    let mut args = vec!["audit", "replay", "--customer", customer, "--out", out.to_str().unwrap()];
    if let Some(s) = stream {
        args.extend(["--stream", s]);
    }
    server.cli(&args)
}

fn verify_file(file: &Path, vkey: &str) -> Output {
    ledgerd(&["verify", "--file", file.to_str().unwrap(), "--verifier-key", vkey, "--state", "/nonexistent/state.json"])
}

fn lines(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_lines(file: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(file, text).unwrap();
}

/// Appends interleaved events of two customers on two streams each; returns customer A.
async fn seed(server: &Server) -> String {
    let (a, b) = (new_id(), new_id());
    let mut c = server.client().await;
    for i in 0..6 {
        for (who, stream) in [(&a, "conv-1"), (&b, "conv-1"), (&a, "conv-2")] {
            c.append(append_req(who, stream, vec![proposed(format!("secret text {i} of {stream}").as_bytes())])).await.unwrap();
        }
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_file_verifies_offline_and_any_tampering_fails() {
    let server = Server::start(&[]);
    let vkey = public_key(&server.data_dir);
    let a = seed(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replay.jsonl");

    let o = replay_to(&server, &a, None, &file);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("secret text"), "the CLI printed a payload: {}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the file holds personal data");
    let all = lines(&file);
    assert_eq!(all.first().unwrap()["type"], "head");
    assert_eq!(all.last().unwrap(), &serde_json::json!({"type": "end", "events": 12}));
    let events: Vec<_> = all.iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), 12, "6 events on each of A's two streams, none of B's");
    assert!(events.iter().all(|e| e["customer_id"] == a.as_str()));
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "global order: {positions:?}");
    assert_eq!(events[0]["payload_text"], "secret text 0 of conv-1");

    let o = verify_file(&file, &vkey);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("checked 12 events"), "{}", text(&o));

    // One stream only.
    let one = dir.path().join("one.jsonl");
    assert!(replay_to(&server, &a, Some("conv-2"), &one).status.success());
    assert_eq!(lines(&one).iter().filter(|l| l["type"] == "event" && l["stream"] == "conv-2").count(), 6);
    let o = verify_file(&one, &vkey);
    assert!(o.status.success(), "{}", text(&o));

    // Each tampering, on its own copy, must fail with a report that names it.
    type Tamper = fn(&mut Vec<serde_json::Value>);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        ("header bit flipped", |l| flip_base64(&mut l[3]["header"]), "is not proven in the signed tree"),
        ("ciphertext hash changed", |l| l[4]["ciphertext_sha256"] = "00".repeat(32).into(), "is not proven in the signed tree"),
        ("proof hash changed", |l| flip_base64(&mut l[2]["inclusion_proof"][0]), "is not proven in the signed tree"),
        ("readable type relabelled", |l| l[5]["event_type"] = "MessageSent".into(), "readable event_type does not match"),
        ("event dropped", |l| {
            l.remove(4);
            let n = l.len() as u64 - 2;
            *l.last_mut().unwrap() = serde_json::json!({"type": "end", "events": n});
        }, "events are missing"),
        ("end line cut off", |l| {
            l.pop();
        }, "the file is truncated"),
        ("another customer's scope claimed", |l| l[0]["request"]["customer_id"] = new_id().into(), "another customer"),
        ("signature altered", |l| {
            let cp = l[0]["checkpoint"].as_str().unwrap().to_owned();
            let (body, sig) = cp.trim_end().rsplit_once(' ').unwrap();
            let mut sig = sig.as_bytes().to_vec();
            sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
            l[0]["checkpoint"] = format!("{body} {}\n", String::from_utf8(sig).unwrap()).into();
        }, "signature does not verify"),
    ];
    for (name, tamper, expect) in cases {
        let mut copy = all.clone();
        tamper(&mut copy);
        let bad = dir.path().join("bad.jsonl");
        write_lines(&bad, &copy);
        let o = verify_file(&bad, &vkey);
        assert!(!o.status.success(), "{name}: a tampered file verified\n{}", text(&o));
        assert!(text(&o).contains(expect), "{name}: expected {expect:?} in\n{}", text(&o));
        assert!(text(&o).contains("NOT VERIFIED"), "{name}: {}", text(&o));
    }
}

fn flip_base64(v: &mut serde_json::Value) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(v.as_str().unwrap()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    *v = b64.encode(bytes).into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_keeps_working_after_the_key_is_destroyed() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let vkey = public_key(data.path());
    let a = seed(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.jsonl");
    assert!(replay_to(&server, &a, None, &before).status.success());
    assert!(server.terminate().success());

    // Destroy A's wrapped data key directly (the erasure workflow will do this through the API).
    {
        let cfs = ledger::store::ALL_CFS;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), data.path().join("db"), cfs).unwrap();
        let keys = db.cf_handle("keys").unwrap();
        let id = uuid::Uuid::parse_str(&a).unwrap();
        assert!(db.get_cf(keys, id.as_bytes()).unwrap().is_some());
        db.delete_cf(keys, id.as_bytes()).unwrap();
    }
    let server = Server::start_in(data.path(), &["--startup-check", "full"]);
    let after = dir.path().join("after.jsonl");
    let o = replay_to(&server, &a, None, &after);
    assert!(o.status.success(), "{}", text(&o));
    let events: Vec<_> = lines(&after).into_iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), 12);
    for e in &events {
        assert_eq!(e["payload_state"], "erased");
        assert!(e.get("payload").is_none() && e.get("payload_text").is_none(), "no body after the key is gone");
    }
    assert!(!std::fs::read_to_string(&after).unwrap().contains("secret"));
    for file in [&before, &after] {
        let o = verify_file(file, &vkey);
        assert!(o.status.success(), "{}: {}", file.display(), text(&o));
        assert!(text(&o).contains("checked 12 events"), "{}", text(&o));
    }
    // The live log still verifies leaf by leaf.
    let state = dir.path().join("state.json");
    let o = server.cli(&["verify", "--verifier-key", &vkey, "--state", state.to_str().unwrap(), "--full"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Every access record in the audit streams (the global system customer's, and the `eu`
/// system customer's, which holds the records about `eu` customers), read back through audited
/// Replays.
async fn access_records(server: &Server) -> Vec<(pb::RecordedEvent, AccessRecord)> {
    let mut audit = AuditClient::new(server.channel().await);
    let eu = ledger::access::system_customer_of(&ledger::types::Region::parse("eu", "r").unwrap());
    let mut out = Vec::new();
    for system in [SYSTEM_CUSTOMER, eu] {
        let req = pb::ReplayRequest { customer_id: system.to_string(), stream: ACCESS_STREAM.into(), from_position: 0, to_position: 0 };
        let mut s = audit.replay(req).await.unwrap().into_inner();
        while let Some(msg) = s.message().await.unwrap() {
            for p in msg.events {
                let ev = p.event.unwrap();
                let rec: AccessRecord = serde_json::from_slice(&ev.payload).unwrap();
                out.push((ev, rec));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decrypting_read_leaves_an_access_record_without_payload_text() {
    let server = Server::start(&[]);
    let a = seed(&server).await;
    let mut c = server.client().await;
    let mut audit = AuditClient::new(server.channel().await);

    assert_eq!(read_stream(&mut c, &a, "conv-1").await.len(), 6);
    let everything = read_all(&mut c).await;
    assert!(everything.len() >= 18);
    {
        let req = pb::SubscribeRequest { from_position: 0, filter: Some(pb::EventFilter { customer_id: a.clone(), ..Default::default() }) };
        let mut sub = c.subscribe(req).await.unwrap().into_inner();
        while let Some(msg) = sub.message().await.unwrap() {
            if msg.live {
                break;
            }
        }
    }
    let req = pb::ReplayRequest { customer_id: a.clone(), stream: "conv-2".into(), from_position: 0, to_position: 0 };
    let mut replay = audit.replay(req).await.unwrap().into_inner();
    while replay.message().await.unwrap().is_some() {}
    let unknown = new_id();
    let refused = audit
        .replay(pb::ReplayRequest { customer_id: unknown.clone(), ..Default::default() })
        .await
        .expect_err("no such customer");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    // Reading the audit stream is a decrypting read of the system customer, and is recorded too.
    let appended = c.append(append_req(&SYSTEM_CUSTOMER.to_string(), ACCESS_STREAM, vec![proposed(b"forged")])).await;
    assert_eq!(appended.expect_err("clients cannot write system streams").code(), tonic::Code::InvalidArgument);

    // The subscription's closing record is written when the server notices the client left.
    let mut records = Vec::new();
    for _ in 0..100 {
        records = access_records(&server).await;
        if records.iter().any(|(_, r)| r.action.ends_with("/Subscribe") && r.outcome == "ended") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let find = |action: &str, outcome: &str, customer: Option<&str>| -> Vec<&AccessRecord> {
        records
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.action == action && r.outcome == outcome && r.customer.map(|c| c.to_string()).as_deref() == customer)
            .collect()
    };
    let rs = find("ledger.v1.Ledger/ReadStream", "granted", Some(&a));
    assert_eq!(rs.len(), 1, "{records:#?}");
    assert_eq!(rs[0].stream.as_deref(), Some("conv-1"));
    assert_eq!(rs[0].params.get("events").map(String::as_str), Some("6"));
    let ra = find("ledger.v1.Ledger/ReadAll", "granted", None);
    assert_eq!(ra.len(), 1, "{records:#?}");
    assert_eq!(ra[0].params.get("from_position").map(String::as_str), Some("0"));
    assert_eq!(find("ledger.v1.Ledger/Subscribe", "granted", Some(&a)).len(), 1, "{records:#?}");
    let ended = find("ledger.v1.Ledger/Subscribe", "ended", Some(&a));
    assert_eq!(ended.len(), 1, "{records:#?}");
    assert_eq!(ended[0].params.get("events").map(String::as_str), Some("12"), "{:?}", ended[0]);
    let rp = find("ledger.v1.Audit/Replay", "granted", Some(&a));
    assert_eq!(rp.len(), 1, "{records:#?}");
    assert_eq!(rp[0].stream.as_deref(), Some("conv-2"));
    assert_eq!(find("ledger.v1.Audit/Replay", "ledger.not_found", Some(&unknown)).len(), 1, "refusals are recorded: {records:#?}");
    // The replay that read these records is itself among them: it was written before its head.
    assert!(!find("ledger.v1.Audit/Replay", "granted", Some(&SYSTEM_CUSTOMER.to_string())).is_empty());
    for (ev, r) in &records {
        assert_eq!(r.principal, "admin", "the authenticated principal");
        assert!(r.origin.starts_with("127.0.0.1:"), "{r:?}");
        let raw = format!("{}{:?}", String::from_utf8_lossy(&ev.payload), ev.metadata);
        assert!(!raw.contains("secret") && !raw.contains("text"), "an access record carries payload text: {raw}");
        // A record about a known customer is in its region's system stream; the rest (whole-log
        // reads, unknown customers, system customers) in the global one.
        let expected = match r.customer {
            Some(c) if !ledger::access::is_system_customer(c) && c.to_string() != unknown => ledger::access::system_customer_of(&ledger::types::Region::parse("eu", "r").unwrap()),
            _ => SYSTEM_CUSTOMER,
        };
        assert_eq!(ev.customer_id, expected.to_string(), "{r:?}");
        let meta: BTreeMap<_, _> = ev.metadata.clone().into_iter().collect();
        assert_eq!(meta.get("action"), Some(&r.action));
    }
}
