//! Provider payloads into one message schema. Parsers only read; they name the field at fault and
//! never echo a value. Each returns the messages in the payload with the raw channel identity of
//! the customer they concern.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConnectorError;

/// The schema version of `NormalizedMessage` payloads.
pub const SCHEMA_VERSION: u32 = 1;

/// An attachment's metadata (the content stays with the provider).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// MIME type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// File name, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The provider's media id or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<String>,
}

/// A delivery status reported by the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `sent`, `delivered`, `read`, `failed`, ...
    pub status: String,
    /// The provider's error codes, for failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<i64>,
}

/// One message (or status update) in the ledger's schema: the event's encrypted payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizedMessage {
    /// `SCHEMA_VERSION`.
    pub schema: u32,
    /// `whatsapp`, `slack`, `sms`, `email`, `teams`.
    pub channel: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `message` or `status`.
    pub kind: String,
    /// The provider's id of the message (for a status: of the message it is about).
    pub provider_message_id: String,
    /// The business account it arrived on (phone number id, team id, number).
    pub account: String,
    /// The customer's identity on the channel, as the provider wrote it.
    pub channel_identity: String,
    /// The sender's display name, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The provider's message type (`text`, `image`, ...).
    pub message_type: String,
    /// The subject (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The text, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Attachments' metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The provider's timestamp, unix milliseconds.
    pub provider_timestamp_ms: i64,
    /// The provider id of the message this replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The provider's thread (Slack `thread_ts`, email references root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// For `kind = status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For `kind = status`: the ledger event of the outbound message it is about
    /// (`MessageQueued`), when the ledger sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_event_id: Option<String>,
}

/// How the customer is identified on the channel, before normalization.
#[derive(Clone, PartialEq, Eq)]
pub enum RawIdentity {
    /// A WhatsApp `wa_id`.
    WhatsApp(String),
    /// A phone number as the provider wrote it.
    Phone(String),
    /// A Slack `team:user`.
    Slack(String),
    /// An email address.
    Email(String),
    /// A Teams (Azure AD) user id.
    Teams(String),
}

impl std::fmt::Debug for RawIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RawIdentity::WhatsApp(_) => "WhatsApp(<redacted>)",
            RawIdentity::Phone(_) => "Phone(<redacted>)",
            RawIdentity::Slack(_) => "Slack(<redacted>)",
            RawIdentity::Email(_) => "Email(<redacted>)",
            RawIdentity::Teams(_) => "Teams(<redacted>)",
        })
    }
}

/// One message of a payload, with who it concerns.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The normalized message.
    pub message: NormalizedMessage,
    /// The customer's channel identity.
    pub identity: RawIdentity,
}

fn invalid(field: &'static str, reason: &str) -> ConnectorError {
    ConnectorError::Invalid { field, reason: reason.to_owned() }
}

fn str_at<'a>(v: &'a Value, key: &str, field: &'static str) -> Result<&'a str, ConnectorError> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| invalid(field, "is missing or not a string"))
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn secs_ms(text: &str, field: &'static str) -> Result<i64, ConnectorError> {
    text.parse::<i64>().ok().and_then(|s| s.checked_mul(1000)).ok_or_else(|| invalid(field, "is not unix seconds"))
}

/// What a WhatsApp webhook holds: the business number and its messages and statuses.
#[derive(Debug)]
pub struct WhatsAppPayload {
    /// Per change: the `phone_number_id` and the messages and statuses in it.
    pub changes: Vec<(String, Vec<Inbound>)>,
}

/// Parses a WhatsApp Cloud API webhook body.
pub fn whatsapp(body: &[u8]) -> Result<WhatsAppPayload, ConnectorError> {
    let root: Value = serde_json::from_slice(body).map_err(|_| invalid("body", "is not JSON"))?;
    if root.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err(invalid("object", "must be whatsapp_business_account"));
    }
    let entries = root.get("entry").and_then(Value::as_array).ok_or_else(|| invalid("entry", "is missing or not an array"))?;
    let mut changes_out = Vec::new();
    for entry in entries {
        let changes = entry.get("changes").and_then(Value::as_array).ok_or_else(|| invalid("entry.changes", "is missing or not an array"))?;
        for change in changes {
            if change.get("field").and_then(Value::as_str) != Some("messages") {
                continue;
            }
            let value = change.get("value").ok_or_else(|| invalid("entry.changes.value", "is missing"))?;
            let metadata = value.get("metadata").ok_or_else(|| invalid("value.metadata", "is missing"))?;
            let account = str_at(metadata, "phone_number_id", "value.metadata.phone_number_id")?.to_owned();
            let contacts = value.get("contacts").and_then(Value::as_array).cloned().unwrap_or_default();
            let name_of = |wa_id: &str| {
                contacts
                    .iter()
                    .find(|c| c.get("wa_id").and_then(Value::as_str) == Some(wa_id))
                    .and_then(|c| c.pointer("/profile/name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let mut out = Vec::new();
            for m in value.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                let from = str_at(m, "from", "messages.from")?.to_owned();
                let id = str_at(m, "id", "messages.id")?.to_owned();
                let ts = secs_ms(str_at(m, "timestamp", "messages.timestamp")?, "messages.timestamp")?;
                let kind = str_at(m, "type", "messages.type")?.to_owned();
                let text = match kind.as_str() {
                    "text" => Some(m.pointer("/text/body").and_then(Value::as_str).ok_or_else(|| invalid("messages.text.body", "is missing"))?.to_owned()),
                    "button" => m.pointer("/button/text").and_then(Value::as_str).map(str::to_owned),
                    "interactive" => m
                        .pointer("/interactive/button_reply/title")
                        .or_else(|| m.pointer("/interactive/list_reply/title"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    "reaction" => m.pointer("/reaction/emoji").and_then(Value::as_str).map(str::to_owned),
                    _ => m.get(&kind).and_then(|media| media.get("caption")).and_then(Value::as_str).map(str::to_owned),
                };
                let attachments = match m.get(&kind) {
                    Some(media) if ["image", "document", "audio", "video", "sticker"].contains(&kind.as_str()) => vec![Attachment {
                        content_type: opt_str(media, "mime_type"),
                        filename: opt_str(media, "filename"),
                        provider_ref: opt_str(media, "id"),
                    }],
                    _ => Vec::new(),
                };
                out.push(Inbound {
                    message: NormalizedMessage {
                        schema: SCHEMA_VERSION,
                        channel: "whatsapp".into(),
                        direction: "inbound".into(),
                        kind: "message".into(),
                        provider_message_id: id,
                        account: account.clone(),
                        sender_name: name_of(&from),
                        channel_identity: from.clone(),
                        message_type: kind,
                        subject: None,
                        text,
                        attachments,
                        provider_timestamp_ms: ts,
                        reply_to: m.pointer("/context/id").and_then(Value::as_str).map(str::to_owned),
                        thread: None,
                        status: None,
                        linked_event_id: None,
                    },
                    identity: RawIdentity::WhatsApp(from),
                });
            }
            for s in value.get("statuses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                let recipient = str_at(s, "recipient_id", "statuses.recipient_id")?.to_owned();
                let error_codes =
                    s.get("errors").and_then(Value::as_array).map(|e| e.iter().filter_map(|e| e.get("code").and_then(Value::as_i64)).collect()).unwrap_or_default();
                out.push(Inbound {
                    message: NormalizedMessage {
                        schema: SCHEMA_VERSION,
                        channel: "whatsapp".into(),
                        direction: "outbound".into(),
                        kind: "status".into(),
                        provider_message_id: str_at(s, "id", "statuses.id")?.to_owned(),
                        account: account.clone(),
                        channel_identity: recipient.clone(),
                        sender_name: None,
                        message_type: "status".into(),
                        subject: None,
                        text: None,
                        attachments: Vec::new(),
                        provider_timestamp_ms: secs_ms(str_at(s, "timestamp", "statuses.timestamp")?, "statuses.timestamp")?,
                        reply_to: None,
                        thread: None,
                        status: Some(Status { status: str_at(s, "status", "statuses.status")?.to_owned(), error_codes }),
                        linked_event_id: None,
                    },
                    identity: RawIdentity::WhatsApp(recipient),
                });
            }
            changes_out.push((account, out));
        }
    }
    Ok(WhatsAppPayload { changes: changes_out })
}

/// What a Slack Events API request asks for.
#[derive(Debug)]
pub enum SlackPayload {
    /// Answer with the challenge.
    UrlVerification(String),
    /// A message event (`event_id`, team, message), to be appended.
    Message {
        /// Slack's `event_id` (the same on every retry).
        event_id: String,
        /// The workspace.
        team_id: String,
        /// The message.
        inbound: Box<Inbound>,
    },
    /// An event we do not record (bot posts, edits, other types): acknowledged, nothing written.
    Ignored,
}

/// Parses a Slack Events API body.
pub fn slack(body: &[u8]) -> Result<SlackPayload, ConnectorError> {
    let root: Value = serde_json::from_slice(body).map_err(|_| invalid("body", "is not JSON"))?;
    match root.get("type").and_then(Value::as_str) {
        Some("url_verification") => Ok(SlackPayload::UrlVerification(str_at(&root, "challenge", "challenge")?.to_owned())),
        Some("event_callback") => {
            let event_id = str_at(&root, "event_id", "event_id")?.to_owned();
            let team_id = str_at(&root, "team_id", "team_id")?.to_owned();
            let event = root.get("event").ok_or_else(|| invalid("event", "is missing"))?;
            // Our own (bot) posts and edits or joins would loop back: not recorded.
            if event.get("type").and_then(Value::as_str) != Some("message") || event.get("bot_id").is_some() || event.get("subtype").is_some() {
                return Ok(SlackPayload::Ignored);
            }
            let user = str_at(event, "user", "event.user")?.to_owned();
            let ts = str_at(event, "ts", "event.ts")?;
            let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
            let ms = secs_ms(secs, "event.ts")? + frac.get(..3).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0);
            let channel = str_at(event, "channel", "event.channel")?.to_owned();
            let identity = format!("{team_id}:{user}");
            Ok(SlackPayload::Message {
                event_id: event_id.clone(),
                team_id: team_id.clone(),
                inbound: Box::new(Inbound {
                    message: NormalizedMessage {
                        schema: SCHEMA_VERSION,
                        channel: "slack".into(),
                        direction: "inbound".into(),
                        kind: "message".into(),
                        provider_message_id: format!("{channel}:{ts}"),
                        account: team_id,
                        channel_identity: identity.clone(),
                        sender_name: None,
                        message_type: "text".into(),
                        subject: None,
                        text: opt_str(event, "text"),
                        attachments: Vec::new(),
                        provider_timestamp_ms: ms,
                        reply_to: None,
                        thread: Some(opt_str(event, "thread_ts").unwrap_or_else(|| ts.to_owned())).map(|t| format!("{channel}:{t}")),
                        status: None,
                        linked_event_id: None,
                    },
                    identity: RawIdentity::Slack(identity),
                }),
            })
        }
        _ => Err(invalid("type", "must be url_verification or event_callback")),
    }
}

/// Parses a Twilio messaging webhook (an inbound SMS or WhatsApp message, or a status callback).
pub fn twilio(body: &[u8], now_ms: i64) -> Result<(String, Inbound), ConnectorError> {
    let params: std::collections::HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str, field: &'static str| params.get(k).filter(|v| !v.is_empty()).cloned().ok_or_else(|| invalid(field, "is missing"));
    let sid = get("MessageSid", "MessageSid")?;
    let account = get("AccountSid", "AccountSid")?;
    let from = get("From", "From")?;
    let to = get("To", "To")?;
    let whatsapp = from.starts_with("whatsapp:") || to.starts_with("whatsapp:");
    let channel = if whatsapp { "whatsapp" } else { "sms" };
    let status = params.get("MessageStatus").or_else(|| params.get("SmsStatus")).cloned();
    let is_status = params.get("Body").is_none() && status.as_deref().is_some_and(|s| s != "received");
    let num_media: usize = params.get("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0).min(10);
    let attachments = (0..num_media)
        .map(|i| Attachment {
            content_type: params.get(&format!("MediaContentType{i}")).cloned(),
            filename: None,
            provider_ref: params.get(&format!("MediaUrl{i}")).cloned(),
        })
        .collect();
    // A status callback concerns the recipient (To); an inbound message its sender (From).
    let customer = if is_status { &to } else { &from };
    let inbound = Inbound {
        message: NormalizedMessage {
            schema: SCHEMA_VERSION,
            channel: channel.into(),
            direction: if is_status { "outbound" } else { "inbound" }.into(),
            kind: if is_status { "status" } else { "message" }.into(),
            provider_message_id: sid,
            account: account.clone(),
            channel_identity: customer.clone(),
            sender_name: None,
            message_type: if num_media > 0 { "media" } else { "text" }.into(),
            subject: None,
            text: if is_status { None } else { params.get("Body").cloned() },
            attachments: if is_status { Vec::new() } else { attachments },
            // Twilio's webhooks carry no message timestamp: the arrival time stands in.
            provider_timestamp_ms: now_ms,
            reply_to: None,
            thread: None,
            status: if is_status {
                Some(Status { status: status.unwrap_or_default(), error_codes: params.get("ErrorCode").and_then(|c| c.parse().ok()).into_iter().collect() })
            } else {
                None
            },
            linked_event_id: None,
        },
        identity: RawIdentity::Phone(customer.trim_start_matches("whatsapp:").to_owned()),
    };
    Ok((account, inbound))
}

/// Parses a raw RFC 5322 / MIME message. Threads by `References` (its first id), then
/// `In-Reply-To`, then the message's own `Message-ID`.
pub fn email(raw: &[u8], account: &str) -> Result<Inbound, ConnectorError> {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default().parse(raw).ok_or_else(|| invalid("body", "is not an RFC 5322 message"))?;
    let from = msg.from().and_then(|a| a.first()).ok_or_else(|| invalid("From", "is missing"))?;
    let address = from.address().filter(|a| a.contains('@')).ok_or_else(|| invalid("From", "has no address"))?.to_lowercase();
    let message_id = msg.message_id().ok_or_else(|| invalid("Message-ID", "is missing"))?.to_owned();
    let in_reply_to = msg.in_reply_to().as_text().map(str::to_owned);
    let references_root = msg.references().as_text_list().and_then(|l| l.first()).map(|r| r.to_string()).or_else(|| msg.references().as_text().map(str::to_owned));
    let attachments = msg
        .attachments()
        .map(|part| Attachment {
            content_type: part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_owned(),
            }),
            filename: part.attachment_name().map(str::to_owned),
            provider_ref: None,
        })
        .collect();
    Ok(Inbound {
        message: NormalizedMessage {
            schema: SCHEMA_VERSION,
            channel: "email".into(),
            direction: "inbound".into(),
            kind: "message".into(),
            provider_message_id: message_id.clone(),
            account: account.to_owned(),
            channel_identity: address.clone(),
            sender_name: from.name().map(str::to_owned),
            message_type: "email".into(),
            subject: msg.subject().map(str::to_owned),
            text: msg.body_text(0).map(|t| t.into_owned()),
            attachments,
            provider_timestamp_ms: msg.date().map_or(0, |d| d.to_timestamp().saturating_mul(1000)),
            reply_to: in_reply_to.clone(),
            thread: Some(references_root.or(in_reply_to).unwrap_or(message_id)),
            status: None,
            linked_event_id: None,
        },
        identity: RawIdentity::Email(address),
    })
}

/// Parses a Bot Framework activity (Microsoft Teams). Only `message` activities are recorded.
pub fn teams(body: &[u8]) -> Result<Option<Inbound>, ConnectorError> {
    let root: Value = serde_json::from_slice(body).map_err(|_| invalid("body", "is not JSON"))?;
    if root.get("type").and_then(Value::as_str) != Some("message") {
        return Ok(None);
    }
    let id = str_at(&root, "id", "id")?.to_owned();
    let from = root.get("from").ok_or_else(|| invalid("from", "is missing"))?;
    let user = from.get("aadObjectId").and_then(Value::as_str).or_else(|| from.get("id").and_then(Value::as_str)).ok_or_else(|| invalid("from.id", "is missing"))?.to_owned();
    let conversation = root.pointer("/conversation/id").and_then(Value::as_str).ok_or_else(|| invalid("conversation.id", "is missing"))?.to_owned();
    let ts = crate::time::parse_rfc3339_ms(str_at(&root, "timestamp", "timestamp")?).ok_or_else(|| invalid("timestamp", "is not RFC 3339"))?;
    Ok(Some(Inbound {
        message: NormalizedMessage {
            schema: SCHEMA_VERSION,
            channel: "teams".into(),
            direction: "inbound".into(),
            kind: "message".into(),
            provider_message_id: format!("{conversation}:{id}"),
            account: root.pointer("/recipient/id").and_then(Value::as_str).unwrap_or_default().to_owned(),
            channel_identity: user.clone(),
            sender_name: from.get("name").and_then(Value::as_str).map(str::to_owned),
            message_type: "text".into(),
            subject: None,
            text: opt_str(&root, "text"),
            attachments: Vec::new(),
            provider_timestamp_ms: ts,
            reply_to: opt_str(&root, "replyToId"),
            thread: Some(conversation),
            status: None,
            linked_event_id: None,
        },
        identity: RawIdentity::Teams(user),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/channels").join(name)).unwrap()
    }

    #[test]
    fn whatsapp_text_fixture() {
        let p = whatsapp(&fixture("whatsapp-inbound-text.json")).unwrap();
        let (account, msgs) = &p.changes[0];
        assert_eq!(account, "106540352242922");
        let m = &msgs[0].message;
        assert_eq!(m.text.as_deref(), Some("Does it come in another color?"));
        assert_eq!(m.provider_timestamp_ms, 1_749_416_383_000);
        assert_eq!(m.channel_identity, "16505551234");
        assert_eq!(m.sender_name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(msgs[0].identity, RawIdentity::WhatsApp("16505551234".into()));
    }

    #[test]
    fn whatsapp_status_fixture() {
        let p = whatsapp(&fixture("whatsapp-status-failed.json")).unwrap();
        let m = &p.changes[0].1[0].message;
        assert_eq!(m.kind, "status");
        assert_eq!(m.status, Some(Status { status: "failed".into(), error_codes: vec![131047] }));
    }

    #[test]
    fn slack_and_twilio_fixtures() {
        match slack(&fixture("slack-event-message.json")).unwrap() {
            SlackPayload::Message { event_id, inbound, .. } => {
                assert_eq!(event_id, "Ev08MFMKH6");
                assert_eq!(inbound.message.provider_timestamp_ms, 1_749_416_390_000);
                assert_eq!(inbound.message.thread.as_deref(), Some("C0LAN2Q65:1749416390.000200"));
            }
            other => panic!("{other:?}"),
        }
        let (account, inbound) = twilio(&fixture("twilio-sms-inbound.form"), 1).unwrap();
        assert_eq!(account, "ACaaaabbbbccccddddeeeeffff00001111");
        assert_eq!(inbound.message.text.as_deref(), Some("Where is my order #41532?"));
        assert_eq!(inbound.message.channel, "sms");
        assert_eq!(inbound.identity, RawIdentity::Phone("+12125550143".into()));
    }

    #[test]
    fn email_fixture() {
        let inbound = email(&fixture("email-inbound.eml"), "support@example.com").unwrap();
        let m = &inbound.message;
        assert_eq!(m.subject.as_deref(), Some("Comprovante de pagamento \u{2013} pedido 41532"));
        assert!(m.text.as_deref().unwrap().starts_with("Ol\u{e1}, segue o comprovante"));
        assert_eq!(m.channel_identity, "ana.souza@example.com.br");
        assert_eq!(m.provider_message_id, "CAF=41532.payment@example.com.br");
        assert_eq!(m.attachments, vec![Attachment { content_type: Some("application/pdf".into()), filename: Some("comprovante.pdf".into()), provider_ref: None }]);
        // Mon, 09 Jun 2025 14:03:11 -0300 is 17:03:11 UTC.
        assert_eq!(m.provider_timestamp_ms, 1_749_488_591_000);
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let e = whatsapp(br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":{}}}]}]}"#).unwrap_err();
        assert!(e.to_string().contains("phone_number_id"), "{e}");
        assert!(slack(b"nope").unwrap_err().to_string().contains("body"));
        assert!(twilio(b"From=%2B1", 0).unwrap_err().to_string().contains("MessageSid"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]
        /// No body, however malformed, panics a parser; each either parses or names a field.
        #[test]
        fn parsers_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
                               json in "[{}\\[\\]\":,a-z_0-9 .@=&%+-]{0,300}") {
            for b in [&body[..], json.as_bytes()] {
                let _ = whatsapp(b);
                let _ = slack(b);
                let _ = twilio(b, 0);
                let _ = email(b, "support@example.com");
                let _ = teams(b);
            }
        }
    }
}
