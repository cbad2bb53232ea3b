//! No customer message is acknowledged and then dropped, and no refusal is silent, against the
//! `ledgerd` binary:
//! - Slack: a photo with its text (`file_share`), a thread reply sent to the channel
//!   (`thread_broadcast`), an edit and a deletion are all written (the edit and deletion linked to
//!   the original); our own bot's echo is not.
//! - Mailgun: a mail with an attachment posted as `multipart/form-data` is written, both as the
//!   raw-MIME forward (`/webhooks/email/mime`, field `body-mime`) and as parsed fields.
//! - A refused webhook (wrong secret, Twilio `public_url` mismatch, malformed, too large) is
//!   logged at WARN with channel, reason and a hint, never the secret or the payload, and counted
//!   by channel and reason in `/metrics`.

mod common;
use common::*;
use hmac::Mac;
use proto::v1 as pb;

const SLACK_SECRET: &str = "slack-signing-secret-0a1b2c";
const MAILGUN_KEY: &str = "mailgun-signing-key-9f8e7d";
const WA_SECRET: &str = "wa-app-secret-5c4b3a";
const TWILIO_TOKEN: &str = "twilio-auth-token-1d2e3f";
const PUBLIC_URL: &str = "https://ledger.example.com";

fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledgerd.toml");
    std::fs::write(
        &config,
        format!(
            "[routing]\nenabled = false\n[connectors]\nbody_bytes_max = 65536\npublic_url = \"{PUBLIC_URL}\"\n\
             [[connectors.slack]]\nteam_id = \"T1DC2JH3J\"\nsigning_secret = \"{SLACK_SECRET}\"\nregion = \"eu\"\nbot_id = \"B0OURBOT\"\n\
             [[connectors.email]]\naddress = \"support@example.com\"\nregion = \"eu\"\nmailgun_signing_key = \"{MAILGUN_KEY}\"\n\
             [[connectors.whatsapp]]\nphone_number_id = \"106540352242922\"\napp_secret = \"{WA_SECRET}\"\nverify_token = \"verify-me-1234\"\nregion = \"eu\"\n\
             [[connectors.twilio]]\naccount_sid = \"ACaaaabbbbccccddddeeeeffff00001111\"\nauth_token = \"{TWILIO_TOKEN}\"\nregion = \"us\"\n"
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

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A raw HTTP/1.1 POST; returns the status.
fn post(server: &Server, path: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    http_request(server, "POST", path, headers, body).0
}

fn slack(server: &Server, event_id: &str, event: serde_json::Value) -> u16 {
    let body = serde_json::json!({"type":"event_callback","team_id":"T1DC2JH3J","api_app_id":"A1","event_id":event_id,"event_time":now(),"event":event}).to_string();
    let ts = now().to_string();
    let sig = hex::encode(hmac256(SLACK_SECRET, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]));
    post(server, "/webhooks/slack", &[("Content-Type", "application/json".into()), ("X-Slack-Request-Timestamp", ts), ("X-Slack-Signature", format!("v0={sig}"))], body.as_bytes())
}

async fn events(server: &Server) -> Vec<(pb::RecordedEvent, serde_json::Value)> {
    read_customer_events(&mut server.client().await).await.into_iter().map(|e| {
        let v = serde_json::from_slice(&e.payload).unwrap_or(serde_json::Value::Null);
        (e, v)
    }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slack_message_kind_is_written_and_our_echo_is_not() {
    let (server, _dir) = start();
    let original = serde_json::json!({"type":"message","channel":"C1","user":"U2CERLKJA","text":"my order arrived broken","ts":"1749416390.000200","channel_type":"channel"});
    let photo = serde_json::json!({"type":"message","subtype":"file_share","channel":"C1","user":"U2CERLKJA","text":"here is the box","ts":"1749416391.000300",
        "files":[{"id":"F07ABC","name":"box.jpg","mimetype":"image/jpeg","url_private":"https://files.slack.com/files-pri/T1DC2JH3J-F07ABC/box.jpg"}]});
    let broadcast = serde_json::json!({"type":"message","subtype":"thread_broadcast","channel":"C1","user":"U2CERLKJA","text":"still waiting","ts":"1749416392.000400","thread_ts":"1749416390.000200"});
    let edit = serde_json::json!({"type":"message","subtype":"message_changed","channel":"C1","hidden":true,"ts":"1749416393.000500",
        "message":{"type":"message","user":"U2CERLKJA","text":"my order arrived badly broken","ts":"1749416390.000200","edited":{"user":"U2CERLKJA","ts":"1749416393.000000"}},
        "previous_message":{"type":"message","user":"U2CERLKJA","text":"my order arrived broken","ts":"1749416390.000200"}});
    let delete = serde_json::json!({"type":"message","subtype":"message_deleted","channel":"C1","hidden":true,"ts":"1749416394.000600","deleted_ts":"1749416391.000300",
        "previous_message":{"type":"message","user":"U2CERLKJA","text":"here is the box","ts":"1749416391.000300"}});
    let echo = serde_json::json!({"type":"message","channel":"C1","user":"U0BOTUSER","bot_id":"B0OURBOT","text":"Thanks, a person will reply","ts":"1749416395.000700"});
    let joined = serde_json::json!({"type":"message","subtype":"channel_join","channel":"C1","user":"U2CERLKJA","text":"<@U2CERLKJA> has joined the channel","ts":"1749416396.000800"});
    for (i, e) in [&original, &photo, &broadcast, &edit, &delete, &echo, &joined].iter().enumerate() {
        // Each delivered twice, as Slack retries: written once.
        for _ in 0..2 {
            assert_eq!(slack(&server, &format!("Ev{i}"), (*e).clone()), 200, "{e}");
        }
    }
    let got = events(&server).await;
    let kinds: Vec<(&str, &str)> = got.iter().map(|(e, v)| (e.event_type.as_str(), v["message_type"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        kinds,
        vec![
            ("MessageReceived", "text"),
            ("MessageReceived", "file_share"),
            ("MessageReceived", "thread_broadcast"),
            ("MessageEdited", "message_changed"),
            ("MessageDeleted", "message_deleted"),
        ],
        "exactly the five customer events, once each"
    );
    let by_type = |t: &str| got.iter().find(|(_, v)| v["message_type"] == t).map(|(e, v)| (e, v)).unwrap();
    let (_, p) = by_type("file_share");
    assert_eq!(p["text"], "here is the box");
    assert_eq!(p["attachments"][0]["filename"], "box.jpg");
    let (_, b) = by_type("thread_broadcast");
    assert_eq!(b["thread"], "C1:1749416390.000200");
    let (original_event, _) = by_type("text");
    let (_, e) = by_type("message_changed");
    assert_eq!(e["text"], "my order arrived badly broken");
    assert_eq!(e["linked_event_id"], original_event.event_id.as_str(), "the edit links to the original's event");
    let (photo_event, _) = by_type("file_share");
    let (_, d) = by_type("message_deleted");
    assert_eq!(d["linked_event_id"], photo_event.event_id.as_str(), "the deletion links to the original's event");
    assert!(d.get("text").is_none(), "a deletion does not keep the deleted text");
    let (_, metrics) = server.http_get_as("/metrics", Some(&server.admin_token()));
    assert!(metrics.contains("ledger_webhook_skipped_total{channel=\"slack\",reason=\"our_bot\"}"), "{metrics}");
    assert!(metrics.contains("ledger_webhook_skipped_total{channel=\"slack\",reason=\"slack_notice\"}"), "{metrics}");
}

/// A mail with a PDF attachment as Mailgun posts it: `multipart/form-data`.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----mailgunBoundary7f3a";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    if let Some((name, ct, bytes)) = file {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"attachment-1\"; filename=\"{name}\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailgun_multipart_posts_are_written_in_both_route_styles() {
    let (server, _dir) = start();
    let ts = now().to_string();
    let token = "7c6b5a4938271605";
    let signature = hex::encode(hmac256(MAILGUN_KEY, &[ts.as_bytes(), token.as_bytes()]));
    let mime = "From: Ana Souza <ana.souza@example.com.br>\r\nTo: support@example.com\r\nSubject: Invoice\r\nMessage-ID: <mg-raw-1@example.com.br>\r\n\
        Date: Mon, 09 Jun 2025 14:03:11 -0300\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
        Segue a nota fiscal.\r\n--b1\r\nContent-Type: application/pdf; name=\"nota.pdf\"\r\nContent-Disposition: attachment; filename=\"nota.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n";
    // The raw-MIME forward: a route to /webhooks/email/mime.
    let (ct, body) = multipart(&[("timestamp", &ts), ("token", token), ("signature", &signature), ("body-mime", mime)], None);
    for _ in 0..2 {
        assert_eq!(post(&server, "/webhooks/email/mime", &[("Content-Type", ct.clone())], &body), 200);
    }
    // Parsed fields with the attachment as a file part: a route to /webhooks/email.
    let headers = serde_json::json!([["Message-Id", "<mg-parsed-2@example.com.br>"], ["Subject", "Recibo"], ["From", "Ana Souza <ana.souza@example.com.br>"], ["Date", "Mon, 09 Jun 2025 15:00:00 -0300"]]).to_string();
    let fields = [
        ("timestamp", ts.as_str()),
        ("token", token),
        ("signature", signature.as_str()),
        ("sender", "ana.souza@example.com.br"),
        ("from", "Ana Souza <ana.souza@example.com.br>"),
        ("subject", "Recibo"),
        ("body-plain", "Segue o recibo em anexo."),
        ("message-headers", headers.as_str()),
        ("attachment-count", "1"),
    ];
    let (ct, body) = multipart(&fields, Some(("recibo.pdf", "application/pdf", b"%PDF-1.4\n%fake\n")));
    for _ in 0..2 {
        assert_eq!(post(&server, "/webhooks/email", &[("Content-Type", ct.clone())], &body), 200);
    }
    // A forged signature in a multipart post is still 401.
    let (ct, body) = multipart(&[("timestamp", &ts), ("token", token), ("signature", "00"), ("body-mime", mime)], None);
    assert_eq!(post(&server, "/webhooks/email/mime", &[("Content-Type", ct)], &body), 401);
    let got = events(&server).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let (_, raw) = &got[0];
    assert_eq!(raw["subject"], "Invoice");
    assert_eq!(raw["attachments"][0]["filename"], "nota.pdf");
    let (_, parsed) = &got[1];
    assert_eq!(parsed["subject"], "Recibo");
    assert!(parsed["text"].as_str().unwrap().contains("Segue o recibo"));
    assert_eq!(parsed["attachments"][0]["filename"], "recibo.pdf");
    assert_eq!(parsed["attachments"][0]["content_type"], "application/pdf");
    assert_eq!(raw["channel_identity"], parsed["channel_identity"], "one sender, one identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_webhooks_are_logged_with_a_hint_and_counted() {
    let (server, _dir) = start();
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let wrong = format!("sha256={}", hex::encode(hmac256("not-the-app-secret", &[body])));
    for _ in 0..5 {
        assert_eq!(post(&server, "/webhooks/whatsapp", &[("Content-Type", "application/json".into()), ("X-Hub-Signature-256", wrong.clone())], body), 401);
    }
    // Twilio signs the URL it called: a signature over another public_url is refused.
    let form = "MessageSid=SM1&AccountSid=ACaaaabbbbccccddddeeeeffff00001111&From=%2B12125550143&To=%2B15005550006&Body=hi";
    let sig = {
        use base64::Engine as _;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
        mac.update(b"https://other.example.com/webhooks/twilio");
        let mut params: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
        params.sort();
        for (k, v) in &params {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    assert_eq!(post(&server, "/webhooks/twilio", &[("Content-Type", "application/x-www-form-urlencoded".into()), ("X-Twilio-Signature", sig)], form.as_bytes()), 401);
    // Malformed after a good signature: 400.
    let garbage = b"{not json";
    let good = format!("sha256={}", hex::encode(hmac256(WA_SECRET, &[garbage])));
    assert_eq!(post(&server, "/webhooks/whatsapp", &[("Content-Type", "application/json".into()), ("X-Hub-Signature-256", good)], garbage), 400);
    // Over body_bytes_max: 413, logged too.
    let big = vec![b'x'; 70_000];
    assert_eq!(post(&server, "/webhooks/slack", &[("Content-Type", "application/json".into())], &big), 413);

    // The log is read from the server's stderr by a thread: wait (bounded) for the last line.
    let mut logs = server.logs();
    for _ in 0..100 {
        if logs.contains("reason=\"too_large\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        logs = server.logs();
    }
    let warn: Vec<&str> = logs.lines().filter(|l| l.contains("WARN") && l.contains("webhook refused")).collect();
    let has = |channel: &str, reason: &str| warn.iter().any(|l| l.contains(&format!("channel=\"{channel}\"")) && l.contains(&format!("reason=\"{reason}\"")));
    assert!(has("whatsapp", "signature") && has("twilio", "signature") && has("whatsapp", "malformed") && has("slack", "too_large"), "{logs}");
    let whatsapp_sig: Vec<&&str> = warn.iter().filter(|l| l.contains("channel=\"whatsapp\"") && l.contains("reason=\"signature\"")).collect();
    assert_eq!(whatsapp_sig.len(), 1, "five refusals alike, one line (rate-limited): {warn:#?}");
    assert!(warn.iter().any(|l| l.contains("twilio") && l.contains("public_url")), "the Twilio hint names public_url: {warn:#?}");
    for secret in [WA_SECRET, TWILIO_TOKEN, "not-the-app-secret", "whatsapp_business_account"] {
        assert!(!logs.contains(secret), "the log shows {secret}");
    }
    let (_, metrics) = server.http_get_as("/metrics", Some(&server.admin_token()));
    for (channel, reason, n) in [("whatsapp", "signature", 5), ("twilio", "signature", 1), ("whatsapp", "malformed", 1), ("slack", "too_large", 1)] {
        let line = format!("ledger_webhook_refused_total{{channel=\"{channel}\",reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}
