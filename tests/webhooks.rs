//! Channel webhooks against the `ledgerd` binary: signatures over the raw bytes (bad or missing is
//! 401, nothing written), size limits (413), malformed bodies (400 naming the field), every fixture
//! ingested into the expected normalized event, each posted three times yielding one event, and
//! identity resolution (three ways of writing one number, linking, erasure) over gRPC.

mod common;
use std::path::Path;

use common::*;
use hmac::Mac;
use proto::v1 as pb;

const WA_SECRET: &str = "wa-app-secret";
const SLACK_SECRET: &str = "slack-signing-secret";
const TWILIO_TOKEN: &str = "twilio-auth-token";
const PUBLIC_URL: &str = "https://ledger.example.com";
const MIME_SECRET: &str = "mime-relay-secret";
const MAILGUN_KEY: &str = "mailgun-signing-key";
const TEAMS_APP: &str = "00000000-1111-2222-3333-444444444444";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/channels").join(name)).unwrap()
}

fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledgerd.toml");
    std::fs::write(
        &config,
        format!(
            "[routing]\n# These tests count the events ingestion writes; the router would add its own.\nenabled = false\n[connectors]\nbody_bytes_max = 65536\npublic_url = \"{PUBLIC_URL}\"\n\
             [[connectors.whatsapp]]\nphone_number_id = \"106540352242922\"\napp_secret = \"{WA_SECRET}\"\nverify_token = \"verify-me\"\nregion = \"eu\"\ndefault_phone_region = \"BR\"\n\
             [[connectors.slack]]\nteam_id = \"T1DC2JH3J\"\nsigning_secret = \"{SLACK_SECRET}\"\nregion = \"eu\"\n\
             [[connectors.twilio]]\naccount_sid = \"ACaaaabbbbccccddddeeeeffff00001111\"\nauth_token = \"{TWILIO_TOKEN}\"\nregion = \"us\"\n\
             [[connectors.email]]\naddress = \"support@example.com\"\nregion = \"eu\"\nraw_mime_secret = \"{MIME_SECRET}\"\nmailgun_signing_key = \"{MAILGUN_KEY}\"\n\
             [[connectors.teams]]\napp_id = \"{TEAMS_APP}\"\njwks_path = \"{jwks}\"\nregion = \"eu\"\n",
            jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teams/jwks.json").display()
        ),
    )
    .unwrap();
    (Server::start(&["--config", config.to_str().unwrap()]), dir)
}


fn hmac256(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn whatsapp_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![("Content-Type", "application/json".into()), ("X-Hub-Signature-256", format!("sha256={}", hex::encode(hmac256(WA_SECRET, &[body]))))]
}

fn slack_headers(body: &[u8], ts: i64) -> Vec<(&'static str, String)> {
    let t = ts.to_string();
    let sig = hex::encode(hmac256(SLACK_SECRET, &[b"v0:", t.as_bytes(), b":", body]));
    vec![("Content-Type", "application/json".into()), ("X-Slack-Request-Timestamp", t), ("X-Slack-Signature", format!("v0={sig}"))]
}

fn twilio_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
    mac.update(format!("{PUBLIC_URL}/webhooks/twilio").as_bytes());
    for (k, v) in &params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![("Content-Type", "application/x-www-form-urlencoded".into()), ("X-Twilio-Signature", sig)]
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn customer_events(server: &Server) -> Vec<pb::RecordedEvent> {
    read_customer_events(&mut server.client().await).await
}

fn payload(e: &pb::RecordedEvent) -> serde_json::Value {
    serde_json::from_slice(&e.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_ingests_once_and_bad_requests_write_nothing() {
    let (server, _dir) = start();
    // WhatsApp handshake.
    let (code, body) = http_request(&server, "GET", "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=12345", &[], b"");
    assert_eq!((code, body.as_str()), (200, "12345"));
    assert_eq!(http_request(&server, "GET", "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1", &[], b"").0, 403);

    // Refusals first: nothing may be written by any of them.
    let wa = fixture("whatsapp-inbound-text.json");
    assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &[], &wa).0, 401, "missing signature");
    let mut flipped = wa.clone();
    flipped[40] ^= 1;
    assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(&wa), &flipped).0, 401, "a changed body");
    let bad = b"{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{\"field\":\"messages\",\"value\":{\"metadata\":{}}}]}]}";
    let (code, body) = http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(bad), bad);
    assert_eq!(code, 400);
    assert!(body.contains("phone_number_id"), "{body}");
    let big = vec![b' '; 70_000];
    assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(&big), &big).0, 413);
    let slack = fixture("slack-event-message.json");
    assert_eq!(http_request(&server, "POST", "/webhooks/slack", &slack_headers(&slack, now() - 400), &slack).0, 401, "stale Slack timestamp");
    let twilio = fixture("twilio-sms-inbound.form");
    let mut wrong = twilio_headers(&twilio);
    wrong[1].1 = "AAAA".into();
    assert_eq!(http_request(&server, "POST", "/webhooks/twilio", &wrong, &twilio).0, 401);
    assert!(customer_events(&server).await.is_empty(), "a refused webhook wrote something");

    // Each fixture three times: one event each.
    for _ in 0..3 {
        assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(&wa), &wa).0, 200);
        let status = fixture("whatsapp-status-failed.json");
        assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(&status), &status).0, 200);
        assert_eq!(http_request(&server, "POST", "/webhooks/slack", &slack_headers(&slack, now()), &slack).0, 200);
        assert_eq!(http_request(&server, "POST", "/webhooks/twilio", &twilio_headers(&twilio), &twilio).0, 200);
    }
    let events = customer_events(&server).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let wa_msg = events.iter().find(|e| e.event_type == "MessageReceived" && e.channel == pb::Channel::Whatsapp as i32).unwrap();
    let p = payload(wa_msg);
    assert_eq!(p["text"], "Does it come in another color?");
    assert_eq!(p["channel_identity"], "16505551234");
    assert_eq!(p["provider_message_id"], "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=");
    assert_eq!(p["provider_timestamp_ms"], 1_749_416_383_000i64);
    assert_eq!(wa_msg.occurred_at.as_ref().unwrap().seconds, 1_749_416_383);
    assert!(wa_msg.stream.starts_with("conv.whatsapp."));
    let st = events.iter().find(|e| e.event_type == "MessageStatusUpdated").unwrap();
    assert_eq!(payload(st)["status"]["error_codes"][0], 131047);
    assert_eq!(wa_msg.customer_id, st.customer_id, "the status joins the same customer");
    let sl = events.iter().find(|e| e.channel == pb::Channel::Slack as i32).unwrap();
    assert_eq!(payload(sl)["text"], "customer on WhatsApp is asking for a refund, can someone take it?");
    let sms = events.iter().find(|e| e.channel == pb::Channel::Sms as i32).unwrap();
    assert_eq!(payload(sms)["text"], "Where is my order #41532?");

    // Slack's url_verification is answered with the challenge.
    let v = br#"{"type":"url_verification","challenge":"abc123","token":"x"}"#;
    let (code, body) = http_request(&server, "POST", "/webhooks/slack", &slack_headers(v, now()), v);
    assert_eq!(code, 200);
    assert!(body.contains("abc123"));
    // No identifier and no message text is stored in the clear: headers and keys are opaque.
    assert!(events.iter().all(|e| e.metadata.is_empty() && !e.stream.contains("1650555") && !e.event_id.contains("wamid")));
    assert!(!server.logs().contains(WA_SECRET) && !server.logs().contains(SLACK_SECRET) && !server.logs().contains(TWILIO_TOKEN));
}

fn identifier(kind: pb::IdentifierKind, value: &str) -> Option<pb::Identifier> {
    Some(pb::Identifier { kind: kind as i32, value: value.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_written_three_ways_is_one_customer_and_erasure_forgets_them() {
    let (server, _dir) = start();
    let mut c = server.client().await;
    let mut ids = Vec::new();
    for (i, raw) in ["+55 11 91234-5678", "5511912345678", "(11) 91234-5678"].iter().enumerate() {
        let r = c
            .resolve_customer(pb::ResolveCustomerRequest {
                identifier: identifier(pb::IdentifierKind::Phone, raw),
                region: "eu".into(),
                create: true,
                default_phone_region: "BR".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.created, i == 0);
        ids.push(r.customer_id);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The WhatsApp sender with that number is the same person.
    let wa = fixture("whatsapp-inbound-text.json");
    let wa = String::from_utf8(wa).unwrap().replace("16505551234", "5511912345678").into_bytes();
    assert_eq!(http_request(&server, "POST", "/webhooks/whatsapp", &whatsapp_headers(&wa), &wa).0, 200);
    assert_eq!(customer_events(&server).await[0].customer_id, ids[0]);
    // Link an email; it resolves to the same customer, and cannot be linked to another.
    let email = identifier(pb::IdentifierKind::Email, "Ana.Souza@Example.com.br");
    c.link_identifier(pb::LinkIdentifierRequest { customer_id: ids[0].clone(), identifier: email.clone(), default_phone_region: String::new() })
        .await
        .unwrap();
    let found = c
        .resolve_customer(pb::ResolveCustomerRequest {
            identifier: identifier(pb::IdentifierKind::Email, "ana.souza@example.com.br"),
            region: "eu".into(),
            create: false,
            default_phone_region: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.customer_id, ids[0]);
    let other = c
        .resolve_customer(pb::ResolveCustomerRequest { identifier: identifier(pb::IdentifierKind::Phone, "+14155550100"), region: "eu".into(), create: true, default_phone_region: String::new() })
        .await
        .unwrap()
        .into_inner();
    let taken = c.link_identifier(pb::LinkIdentifierRequest { customer_id: other.customer_id, identifier: email, default_phone_region: String::new() }).await;
    assert_eq!(taken.unwrap_err().code(), tonic::Code::InvalidArgument);
    let bad = c.resolve_customer(pb::ResolveCustomerRequest { identifier: identifier(pb::IdentifierKind::Phone, "call me"), region: "eu".into(), create: true, default_phone_region: String::new() }).await;
    let bad = bad.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(!bad.message().contains("call me"), "the rejected value is not echoed");

    // Erasure deletes the blind-index rows: the number no longer leads to the customer.
    let mut privacy = proto::v1::privacy_client::PrivacyClient::new(server.channel().await);
    privacy
        .erase_customer(pb::EraseCustomerRequest { customer_id: ids[0].clone(), request_id: "r1".into(), legal_basis: "gdpr-art17".into(), requested_by: "dpo".into() })
        .await
        .unwrap();
    let gone = c
        .resolve_customer(pb::ResolveCustomerRequest { identifier: identifier(pb::IdentifierKind::Phone, "5511912345678"), region: "eu".into(), create: false, default_phone_region: "BR".into() })
        .await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
}

fn teams_token(claims: serde_json::Value) -> String {
    let pem = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teams/test-signing-key.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_and_teams_are_authenticated_and_ingested_once() {
    let (server, _dir) = start();
    // Raw MIME from a relay, signed over the raw bytes.
    let eml = fixture("email-inbound.eml");
    let sig = |body: &[u8]| vec![("Content-Type", "message/rfc822".to_owned()), ("X-Ledger-Signature", format!("sha256={}", hex::encode(hmac256(MIME_SECRET, &[body]))))];
    assert_eq!(http_request(&server, "POST", "/webhooks/email", &[("Content-Type", "message/rfc822".into())], &eml).0, 401);
    let mut changed = eml.clone();
    changed[100] ^= 1;
    assert_eq!(http_request(&server, "POST", "/webhooks/email", &sig(&eml), &changed).0, 401);
    for _ in 0..3 {
        assert_eq!(http_request(&server, "POST", "/webhooks/email", &sig(&eml), &eml).0, 200);
    }
    // Mailgun's form with the raw message in body-mime (another Message-ID: a second email).
    let second = String::from_utf8(eml.clone()).unwrap().replace("CAF=41532.payment", "CAF=41533.followup");
    let mailgun = |ts: i64| {
        let token = "f0e1d2c3b4a5";
        let signature = hex::encode(hmac256(MAILGUN_KEY, &[ts.to_string().as_bytes(), token.as_bytes()]));
        form_urlencoded::Serializer::new(String::new())
            .append_pair("timestamp", &ts.to_string())
            .append_pair("token", token)
            .append_pair("signature", &signature)
            .append_pair("body-mime", &second)
            .finish()
    };
    let form = [("Content-Type", "application/x-www-form-urlencoded".to_owned())];
    assert_eq!(http_request(&server, "POST", "/webhooks/email", &form, mailgun(now() - 600).as_bytes()).0, 401, "stale Mailgun timestamp");
    let bad_sig = mailgun(now()).replace("signature=", "signature=00");
    assert_eq!(http_request(&server, "POST", "/webhooks/email", &form, bad_sig.as_bytes()).0, 401);
    assert_eq!(http_request(&server, "POST", "/webhooks/email", &form, mailgun(now()).as_bytes()).0, 200);

    // Teams: a Bot Framework token from the configured JWKS, right issuer, audience and time.
    let activity = serde_json::json!({"type":"message","id":"1749488591123","timestamp":"2025-06-09T17:03:11.123Z",
        "channelId":"msteams","from":{"id":"29:1abc","name":"Ana","aadObjectId":"6f1c0d2e-aaaa-bbbb-cccc-000000000001"},
        "conversation":{"id":"a:1conv"},"recipient":{"id":"28:bot"},"text":"Can I change my delivery address?"}).to_string();
    let good = serde_json::json!({"iss":"https://api.botframework.com","aud":TEAMS_APP,"exp":now()+600,"nbf":now()-10});
    let bearer = |claims: serde_json::Value| vec![("Content-Type", "application/json".to_owned()), ("Authorization", format!("Bearer {}", teams_token(claims)))];
    let mut claims = good.clone();
    claims["aud"] = "another-app".into();
    assert_eq!(http_request(&server, "POST", "/webhooks/teams", &bearer(claims), activity.as_bytes()).0, 401, "audience");
    let mut claims = good.clone();
    claims["iss"] = "https://evil.example".into();
    assert_eq!(http_request(&server, "POST", "/webhooks/teams", &bearer(claims), activity.as_bytes()).0, 401, "issuer");
    let mut claims = good.clone();
    claims["exp"] = (now() - 400).into();
    assert_eq!(http_request(&server, "POST", "/webhooks/teams", &bearer(claims), activity.as_bytes()).0, 401, "expired beyond the skew");
    let mut tampered = bearer(good.clone());
    // Change a character in the middle of the signature (the last one may carry only padding bits).
    let mut t = tampered[1].1.clone().into_bytes();
    let mid = t.iter().rposition(|&b| b == b'.').unwrap() + 20;
    t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
    tampered[1].1 = String::from_utf8(t).unwrap();
    assert_eq!(http_request(&server, "POST", "/webhooks/teams", &tampered, activity.as_bytes()).0, 401, "signature");
    assert_eq!(http_request(&server, "POST", "/webhooks/teams", &[], activity.as_bytes()).0, 401, "no token");
    assert!(customer_events(&server).await.iter().all(|e| e.channel != pb::Channel::Teams as i32));
    let mut claims = good.clone();
    claims["exp"] = (now() - 100).into();
    for c in [good.clone(), claims] {
        assert_eq!(http_request(&server, "POST", "/webhooks/teams", &bearer(c), activity.as_bytes()).0, 200, "valid (and expired within the skew)");
    }

    let events = customer_events(&server).await;
    let emails: Vec<_> = events.iter().filter(|e| e.channel == pb::Channel::Email as i32).collect();
    assert_eq!(emails.len(), 2, "the relay's three posts are one event, Mailgun's is the second");
    let p = payload(emails[0]);
    assert_eq!(p["subject"], "Comprovante de pagamento \u{2013} pedido 41532");
    assert_eq!(p["attachments"][0]["filename"], "comprovante.pdf");
    assert_eq!(payload(emails[1])["thread"], "CAF=41533.followup@example.com.br");
    assert_eq!(emails[0].customer_id, emails[1].customer_id, "one sender, one customer");
    let teams: Vec<_> = events.iter().filter(|e| e.channel == pb::Channel::Teams as i32).collect();
    assert_eq!(teams.len(), 1);
    assert_eq!(payload(teams[0])["text"], "Can I change my delivery address?");
    assert_eq!(teams[0].occurred_at.as_ref().unwrap().seconds, 1_749_488_591);
}
