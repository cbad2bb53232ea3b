//! Secrets never leak: a server logging at `debug` for every crate (ours, and hyper, h2, tonic,
//! rustls, reqwest under them) is configured with canary webhook secrets and given a canary
//! bearer token, and every path that touches them is driven (good and bad tokens, revocation,
//! signed and mis-signed webhooks, the verification handshake, failing downstream deliveries,
//! metrics). Neither the log, nor `/metrics`, nor any error returned to a client holds a canary.
//!
//! Every other test's server is checked the same way when it is dropped (`tests/common`): its
//! log must hold no configured secret and nothing shaped like a bearer token.

mod common;
use common::*;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::ledger_client::LedgerClient;
use proto::v1::privacy_client::PrivacyClient;

const APP_SECRET: &str = "canary-whatsapp-app-secret-1b2c3d";
const VERIFY_TOKEN: &str = "canary-whatsapp-verify-token-4e5f";
const ACCESS_TOKEN: &str = "canary-whatsapp-access-token-6a7b";
const ERASURE_SECRET: &str = "canary-erasure-downstream-secret-8c9d";
const CRM_SECRET: &str = "canary-crm-webhook-secret-0e1f";
const NUMBER: &str = "106540352242922";

/// The provider's sample inbound message (its `phone_number_id` is `NUMBER`).
fn whatsapp_body() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/channels/whatsapp-inbound-text.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_and_tokens_appear_in_no_log_metric_or_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ledgerd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[routing]\nenabled = false\n\
             [crm]\nwebhook_secret = \"{CRM_SECRET}\"\n\
             [erasure]\nattempts_max = 2\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\nrequest_timeout_ms = 500\n\
             [[erasure.downstream]]\nname = \"warehouse\"\nurl = \"http://127.0.0.1:1/erasures\"\nsecret = \"{ERASURE_SECRET}\"\n\
             [[connectors.whatsapp]]\nphone_number_id = \"{NUMBER}\"\napp_secret = \"{APP_SECRET}\"\nverify_token = \"{VERIFY_TOKEN}\"\n\
             access_token = \"{ACCESS_TOKEN}\"\nregion = \"eu\"\ndefault_phone_region = \"BR\"\napi_base_url = \"http://127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(data.path(), &["--config", cfg.to_str().unwrap()], &[("LEDGER_LOG", "debug")]);
    let mut errors = Vec::new();

    // A canary token: used, denied, revoked, used again; and a well-formed token nobody issued.
    let mut admin = AdminClient::new(server.channel().await);
    let created = admin
        .create_token(pb::CreateTokenRequest { principal: "canary".into(), roles: vec!["reader".into()], regions: vec!["eu".into()], ttl_seconds: 0 })
        .await
        .unwrap()
        .into_inner();
    let canary = created.token.clone();
    let mut reader = LedgerClient::new(server.channel_as(Some(&canary)).await);
    let customer = new_id();
    errors.push(reader.append(append_req(&customer, "s", vec![proposed(b"{}")])).await.unwrap_err().message().to_owned());
    let _ = read_stream(&mut reader, &new_id(), "s").await;
    admin.revoke_token(pb::RevokeTokenRequest { id: created.info.unwrap().id }).await.unwrap();
    let revoked = reader.read_all(pb::ReadAllRequest { from_position: 0, max_count: 1, filter: None }).await.unwrap_err();
    assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
    errors.push(revoked.message().to_owned());
    let forged = format!("ldg_{}", "ab".repeat(32));
    let mut stranger = LedgerClient::new(server.channel_as(Some(&forged)).await);
    errors.push(stranger.append(append_req(&customer, "s", vec![proposed(b"{}")])).await.unwrap_err().message().to_owned());

    // Webhooks: the verification handshake with the right and a wrong token; a signed message
    // and a mis-signed one.
    let (status, body) = server.http_get_as(&format!("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=4242"), None);
    assert_eq!((status, body.trim()), (200, "4242"));
    let (status, body) = server.http_get_as("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1", None);
    assert_eq!(status, 403);
    errors.push(body);
    post_whatsapp_signed(&server, APP_SECRET, &whatsapp_body());
    let bad = http_post(&server, "/webhooks/whatsapp", &[("X-Hub-Signature-256", format!("sha256={}", "00".repeat(32)))], &whatsapp_body());
    assert_eq!(bad, 401);

    // An erasure whose downstream delivery fails (nothing listens there) until it is a dead letter.
    let mut client = server.client().await;
    client.append(append_req(&customer, "s", vec![proposed(b"{\"text\":\"hi\"}")])).await.unwrap();
    let mut privacy = PrivacyClient::new(server.channel().await);
    privacy
        .erase_customer(pb::EraseCustomerRequest { customer_id: customer.clone(), request_id: new_id(), legal_basis: "gdpr-art-17".into(), requested_by: "dpo@example.com".into() })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !server.logs().contains("dead-lettered") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (_, metrics) = server.http_get("/metrics");
    let canaries = [APP_SECRET, VERIFY_TOKEN, ACCESS_TOKEN, ERASURE_SECRET, CRM_SECRET, &canary, &forged, &server.admin_token()];
    let logs = server.logs();
    assert!(logs.lines().count() > 50, "the debug log was captured:\n{logs}");
    for c in canaries {
        assert!(!logs.contains(c), "a canary is in the log");
        assert!(!metrics.contains(c), "a canary is in the metrics");
        for e in &errors {
            assert!(!e.contains(c), "a canary is in an error returned to a client: {e}");
        }
    }
}
