//! The routing and CRM-sync views end to end: WhatsApp messages in three languages are triaged
//! into intents and queues, acknowledged in the customer's language when a person will answer,
//! escalated to Slack (an explicit request for a person, then an SLA timer), abandoned when idle,
//! and rerouted by an agent when misclassified. Then erasure: the customer's context and
//! conversations are gone from the API, and no plaintext of theirs is in the views' files.

mod common;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proto::v1 as pb;
use proto::v1::views_client::ViewsClient;

const WA_SECRET: &str = "wa-app-secret";
const NUMBER: &str = "106540352242922";

#[derive(Clone, Default)]
struct Fake {
    whatsapp: Arc<Mutex<Vec<serde_json::Value>>>,
    slack: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn fake_provider() -> (String, Fake) {
    let fake = Fake::default();
    let (wa, slack) = (fake.clone(), fake.clone());
    let app = axum::Router::new()
        .route(
            "/slack/chat.postMessage",
            axum::routing::post(move |body: String| {
                let s = slack.clone();
                async move {
                    s.slack.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], r#"{"ok":true,"channel":"C0ESCALATE","ts":"1749416400.000300"}"#)
                }
            }),
        )
        .route(
            "/{number}/messages",
            axum::routing::post(move |body: String| {
                let s = wa.clone();
                async move {
                    let mut w = s.whatsapp.lock().unwrap();
                    w.push(serde_json::from_str(&body).unwrap());
                    let reply = serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.ack.{}", w.len())}]});
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], reply.to_string())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

/// The embedded rules with short timers, all-week business hours and a Slack escalation channel.
fn write_config(dir: &std::path::Path, api: &str) -> std::path::PathBuf {
    let rules = projections::rules::DEFAULT_RULES
        .replace("abandon_after_secs = 86400", "abandon_after_secs = 8")
        .replace("sla_secs = 900", "sla_secs = 1")
        .replace("days = [1, 2, 3, 4, 5]", "days = [1, 2, 3, 4, 5, 6, 7]")
        .replace("open = \"09:00\"", "open = \"00:00\"")
        .replace("close = \"18:00\"", "close = \"24:00\"")
        .replace("slack_account = \"\"", "slack_account = \"T1DC2JH3J\"")
        .replace("slack_channel = \"\"", "slack_channel = \"C0ESCALATE\"");
    let rules_path = dir.join("routing.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let path = dir.join("ledgerd.toml");
    std::fs::write(
        &path,
        format!(
            "[connectors]\noutbound_backoff_initial_ms = 100\n\
             [[connectors.slack]]\nteam_id = \"T1DC2JH3J\"\nsigning_secret = \"s\"\nregion = \"eu\"\nbot_token = \"xoxb-test\"\napi_base_url = \"{api}/slack\"\n\
             [[connectors.whatsapp]]\nphone_number_id = \"{NUMBER}\"\napp_secret = \"{WA_SECRET}\"\nverify_token = \"v\"\nregion = \"eu\"\n\
             default_phone_region = \"BR\"\naccess_token = \"t\"\napi_base_url = \"{api}\"\n\
             [routing]\nrules = \"{}\"\nsweep_interval_ms = 200\n",
            rules_path.display()
        ),
    )
    .unwrap();
    path
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An inbound WhatsApp text from `wa_id` (with a profile name), posted and signed.
fn inbound(server: &Server, wa_id: &str, name: &str, text: &str) {
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":NUMBER},
        "contacts":[{"wa_id":wa_id,"profile":{"name":name}}],
        "messages":[{"from":wa_id,"id":format!("wamid.{}", new_id()),"timestamp":now().to_string(),"type":"text","text":{"body":text}}]}}]}]})
    .to_string();
    post_whatsapp_signed(server, WA_SECRET, &body);
}

async fn customer_of(server: &Server, wa_id: &str) -> String {
    let req = pb::ResolveCustomerRequest {
        identifier: Some(pb::Identifier { kind: pb::IdentifierKind::Whatsapp as i32, value: wa_id.into() }),
        region: "eu".into(),
        create: false,
        default_phone_region: "BR".into(),
    };
    server.client().await.resolve_customer(req).await.unwrap().into_inner().customer_id
}

/// Waits until the customer's first conversation satisfies `ok`.
async fn conversation_until(views: &mut ViewsClient<Conn>, customer: &str, what: &str, ok: impl Fn(&pb::Conversation) -> bool) -> pb::Conversation {
    let mut last = None;
    for _ in 0..600 {
        if let Ok(r) = views.get_customer_context(pb::GetCustomerContextRequest { customer_id: customer.into(), max_interactions: 10 }).await {
            if let Some(c) = r.into_inner().conversations.into_iter().next() {
                if ok(&c) {
                    return c;
                }
                last = Some(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("conversation never {what}: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_triaged_acknowledged_escalated_abandoned_and_rerouted() {
    let (api, fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", write_config(dir.path(), &api).to_str().unwrap()]);
    let mut views = ViewsClient::new(server.channel().await);

    // Table: language, message, expected intent, queue, routed state.
    let cases = [
        ("5511911110001", "Quero fazer uma reclamação, o produto chegou quebrado", "complaint", "complaints", "awaiting_agent"),
        ("5511911110002", "Hi! I'd like to book a table for two tonight", "order_or_booking", "sales", "automated"),
        ("5511911110003", "¿Cuál es el precio del plan anual?", "information_request", "automation", "automated"),
        ("5511911110004", "hola", "support_inquiry", "support", "awaiting_agent"),
        ("5511911110005", "Necesito hablar con un agente, por favor", "support_inquiry", "support", "awaiting_agent"),
    ];
    for (wa, text, ..) in &cases {
        inbound(&server, wa, "Cliente", text);
    }
    let mut customers = Vec::new();
    for (wa, _, intent, queue, routed) in &cases {
        let customer = customer_of(&server, wa).await;
        let c = conversation_until(&mut views, &customer, "triaged", |c| !c.intent.is_empty()).await;
        assert_eq!((c.intent.as_str(), c.queue.as_str()), (*intent, *queue), "{wa}");
        let states: Vec<&str> = c.history.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(&states[..3], ["open", "triaged", routed], "{wa}: {states:?}");
        customers.push(customer);
    }

    // The Spanish request for a person escalates at once and is posted to Slack with context.
    let c = conversation_until(&mut views, &customers[4], "escalated", |c| c.escalation == "human_request").await;
    assert!(c.history.iter().any(|t| t.to == "escalated:human_request"));
    // Acknowledgements went to the customers a person will answer, in their language; none to
    // the automated ones.
    for _ in 0..200 {
        if fake.whatsapp.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acks: Vec<(String, String)> = fake.whatsapp.lock().unwrap().iter().map(|j| (j["to"].as_str().unwrap().to_owned(), j.pointer("/text/body").unwrap().as_str().unwrap().to_owned())).collect();
    assert!(acks.iter().any(|(to, body)| to == "5511911110001" && body.starts_with("Obrigado")), "{acks:?}");
    assert!(acks.iter().any(|(to, body)| to == "5511911110005" && body.starts_with("Gracias")), "{acks:?}\n{}", server.logs());
    assert!(!acks.iter().any(|(to, _)| to == "5511911110002" || to == "5511911110003"), "automated conversations get no acknowledgement: {acks:?}");

    // The misclassified "hola" is rerouted by an agent; the view and the queue follow.
    let hola = conversation_until(&mut views, &customers[3], "triaged", |c| !c.intent.is_empty()).await;
    views
        .reroute(pb::RerouteRequest {
            customer_id: customers[3].clone(),
            stream: hola.stream.clone(),
            intent: "information_request".into(),
            queue: "automation".into(),
            agent: "agent-7".into(),
            reason: "asked for opening hours".into(),
            request_id: "r-1".into(),
        })
        .await
        .unwrap();
    let c = conversation_until(&mut views, &customers[3], "rerouted", |c| c.intent == "information_request").await;
    assert_eq!(c.queue, "automation");
    assert!(c.history.iter().any(|t| t.to == "rerouted" && t.by == "agent-7"));
    let queue = views.list_queue(pb::ListQueueRequest { queue: "automation".into(), max_count: 0 }).await.unwrap().into_inner();
    assert!(queue.conversations.iter().any(|q| q.customer_id == customers[3]));
    let bad = views.reroute(pb::RerouteRequest { customer_id: customers[3].clone(), stream: hola.stream.clone(), intent: "gossip".into(), queue: "automation".into(), agent: "a".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The complaint waits past the 1 s SLA with no reply: escalated, and posted to Slack.
    let c = conversation_until(&mut views, &customers[0], "escalated by SLA", |c| c.escalation == "sla").await;
    assert_eq!(c.state, "awaiting_agent");
    for _ in 0..200 {
        if fake.slack.lock().unwrap().iter().any(|j| j["text"].as_str().unwrap().contains(&format!("Escalation: sla*\nCustomer {}", customers[0]))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts: Vec<String> = fake.slack.lock().unwrap().iter().map(|j| j["text"].as_str().unwrap().to_owned()).collect();
    let sla_post = posts.iter().find(|p| p.contains("Escalation: sla") && p.contains(&customers[0])).unwrap_or_else(|| panic!("{posts:?}"));
    assert!(sla_post.contains("Intent: complaint") && sla_post.contains("chegou quebrado") && sla_post.contains("Recommended action"), "{sla_post}");
    assert!(posts.iter().any(|p| p.contains("Escalation: human_request")), "{posts:?}");
    assert!(fake.slack.lock().unwrap().iter().all(|j| j["channel"] == "C0ESCALATE"));

    // An agent resolves the complaint; the state machine refuses nonsense.
    let complaint = conversation_until(&mut views, &customers[0], "present", |_| true).await;
    views.set_conversation_state(pb::SetConversationStateRequest { customer_id: customers[0].clone(), stream: complaint.stream.clone(), state: "resolved".into(), agent: "agent-7".into(), request_id: String::new() }).await.unwrap();
    conversation_until(&mut views, &customers[0], "resolved", |c| c.state == "resolved").await;
    let err = views.set_conversation_state(pb::SetConversationStateRequest { customer_id: customers[0].clone(), stream: complaint.stream, state: "open".into(), agent: "a".into(), request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Idle past abandon_after_secs: abandoned, and out of its queue.
    let c = conversation_until(&mut views, &customers[1], "abandoned", |c| c.state == "abandoned").await;
    assert!(c.history.iter().any(|t| t.to == "abandoned" && t.by == "router"));
    let sales = views.list_queue(pb::ListQueueRequest { queue: "sales".into(), max_count: 0 }).await.unwrap().into_inner();
    assert!(!sales.conversations.iter().any(|q| q.customer_id == customers[1]));

    // The fallback rate per intent is a metric.
    let (_, metrics) = server.http_get("/metrics");
    assert!(metrics.contains("ledger_routing_fallback_ratio{intent=\"complaint\"} 1"), "{}", metrics.lines().filter(|l| l.contains("fallback")).collect::<Vec<_>>().join("\n"));
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_the_customer_from_every_view_and_no_plaintext_is_on_disk() {
    let (api, _fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", write_config(dir.path(), &api).to_str().unwrap()]);
    let mut views = ViewsClient::new(server.channel().await);
    let (wa, name, secret_text) = ("5511977776666", "Zefinha Quaresma", "meu CPF 123.456.789-09, quero reclamar do pedido");
    inbound(&server, wa, name, secret_text);
    let customer = customer_of(&server, wa).await;
    let c = conversation_until(&mut views, &customer, "triaged", |c| !c.intent.is_empty()).await;
    let ctx = views.get_customer_context(pb::GetCustomerContextRequest { customer_id: customer.clone(), max_interactions: 10 }).await.unwrap().into_inner();
    assert!(ctx.interactions.iter().any(|i| i.text == secret_text), "the context decrypts the message");
    assert!(ctx.identities.iter().any(|i| i.channel == "whatsapp" && i.identifier == wa && i.display_name == name));
    // Views hold no plaintext even before erasure: texts, numbers and names stay in the log.
    let projections = server.data_dir.join("projections");
    let before = all_bytes(&projections);
    for needle in ["123.456.789-09", "Zefinha", wa] {
        assert!(!contains(&before, needle), "{needle} in the views' files before erasure");
    }

    let mut privacy = proto::v1::privacy_client::PrivacyClient::new(server.channel().await);
    privacy
        .erase_customer(pb::EraseCustomerRequest { customer_id: customer.clone(), request_id: "e-1".into(), legal_basis: "gdpr-art17-1a".into(), requested_by: "dpo-1".into() })
        .await
        .unwrap();
    // Not found through every view's API, as soon as the erasure returns.
    let err = views.get_customer_context(pb::GetCustomerContextRequest { customer_id: customer.clone(), max_interactions: 10 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let mut gone = false;
    for _ in 0..200 {
        match views.get_conversation(pb::GetConversationRequest { customer_id: customer.clone(), stream: c.stream.clone() }).await {
            Err(e) if e.code() == tonic::Code::NotFound => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(gone, "the routing view forgot the conversation");
    for q in ["complaints", "support", "sales", "automation"] {
        let list = views.list_queue(pb::ListQueueRequest { queue: q.into(), max_count: 0 }).await.unwrap().into_inner();
        assert!(!list.conversations.iter().any(|x| x.customer_id == customer), "still in queue {q}");
    }
    let after = all_bytes(&projections);
    for needle in ["123.456.789-09", "Zefinha", wa] {
        assert!(!contains(&after, needle), "{needle} in the views' files after erasure");
    }
}
