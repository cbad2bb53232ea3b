//! A dead writer is not a ready node, and a configuration that cannot serve creates nothing.
//!
//! The writer thread is made to panic (the hidden fault-injection flag makes it panic staging an
//! append to one stream): the store is then poisoned exactly as after a failed fsync: the append
//! and every later one get UNAVAILABLE with `ledger.store_poisoned`, `/readyz` answers 503, gRPC
//! health turns NOT_SERVING, the log says why and `/metrics` counts it; signed heads still answer.

mod common;
use common::*;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn error_code(status: &tonic::Status) -> String {
    status.metadata().get("ledger-error-code").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn health(server: &Server, service: &str) -> i32 {
    let mut h = HealthClient::new(server.channel().await);
    h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_writer_poisons_the_store_and_the_node_stops_looking_ready() {
    let server = Server::start(&["--inject-writer-panic-on-stream", "boom"]);
    let mut c = server.client().await;
    let customer = new_id();
    c.append(append_req(&customer, "fine", vec![proposed(b"before")])).await.unwrap();
    assert_eq!(server.http_get("/readyz").0, 200);
    let serving = tonic_health::ServingStatus::Serving as i32;
    assert_eq!(health(&server, "ledger.v1.Ledger").await, serving);

    let died = c.append(append_req(&customer, "boom", vec![proposed(b"never")])).await.unwrap_err();
    assert_eq!(died.code(), tonic::Code::Unavailable, "{died:?}");
    assert_eq!(error_code(&died), "ledger.store_poisoned", "{died:?}");
    let after = c.append(append_req(&customer, "fine", vec![proposed(b"after")])).await.unwrap_err();
    assert_eq!(error_code(&after), "ledger.store_poisoned", "poisoned stays poisoned");
    assert_eq!(server.http_get("/readyz").0, 503);
    // The health watcher runs on its own task: wait for it, with a bound.
    let not_serving = tonic_health::ServingStatus::NotServing as i32;
    let mut status = serving;
    for _ in 0..100 {
        status = health(&server, "ledger.v1.Ledger").await;
        if status == not_serving {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, not_serving, "health still SERVING with a dead writer");
    assert_eq!(health(&server, "").await, not_serving, "the server as a whole");
    let logs = server.logs();
    assert!(logs.contains("store poisoned") && logs.contains("writer thread panicked"), "{logs}");
    let (_, metrics) = server.http_get_as("/metrics", Some(&server.admin_token()));
    assert!(metrics.lines().any(|l| l.starts_with("ledger_store_poisoned ") && l.ends_with(" 1")), "{metrics}");
    assert!(metrics.contains("ledger_store_poisoned_total{cause=\"writer thread panicked\"} 1"), "{metrics}");
    // What needs no write still answers: the signed head, over exactly what was acknowledged
    // (the first event and its access records, nothing of the appends that failed). A decrypting
    // read needs its access record written first, so it is refused, never served unrecorded.
    let mut audit = proto::v1::audit_client::AuditClient::new(server.channel().await);
    let head = audit.get_tree_head(proto::v1::GetTreeHeadRequest {}).await.unwrap().into_inner();
    assert!(head.tree_head.unwrap().tree_size >= 1);
    let read = c.read_stream(proto::v1::ReadStreamRequest { customer_id: customer.clone(), stream: "fine".into(), max_count: 10, ..Default::default() }).await.unwrap_err();
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
}

/// Refused configurations leave the data directory as they found it: empty.
#[test]
fn a_refused_configuration_creates_nothing() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--grpc-addr".into(), "0.0.0.0:0".into()], "refusing to serve plaintext grpc"),
        (vec!["--tls-cert".into(), "/nonexistent/cert.pem".into(), "--tls-key".into(), "/nonexistent/key.pem".into()], "cert.pem"),
    ];
    for (flags, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec!["serve".to_owned(), "--http-addr".into(), "127.0.0.1:0".into(), "--data-dir".into(), data.display().to_string()];
        if !flags.contains(&"--grpc-addr".to_owned()) {
            args.extend(["--grpc-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = ledgerd(&args);
        assert!(!o.status.success(), "{flags:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{flags:?}: {}", text(&o));
        assert!(!data.exists(), "{flags:?} created {:?}", files_containing(dir.path(), b""));
    }
    // Limits the stored format cannot hold are refused before anything is created too.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledgerd.toml");
    std::fs::write(&config, "[limits]\nstream_name_bytes_max = 70000\n").unwrap();
    let data = dir.path().join("data");
    let o = ledgerd(&["serve", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    assert!(!o.status.success() && text(&o).contains("stream_name_bytes_max"), "{}", text(&o));
    assert!(!data.exists());
}
