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
    /// The business address the customer wrote to (Twilio's `To`: a number, or
    /// `whatsapp:+E164`), so a reply goes out from it on the same channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_address: Option<String>,
    /// For `kind = edit` or `delete`: the provider id of the message edited or deleted (Slack's
    /// `message_changed` / `message_deleted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<String>,
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
                        business_address: None,
                        edits: None,
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
                        business_address: None,
                        edits: None,
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
    /// An event that carries no person's message (see `slack` for which): acknowledged, nothing
    /// written. The reason names the subtype or rule, for the skip counter.
    Ignored(&'static str),
}

/// What a Slack message event's subtype means for the ledger.
enum SlackKind {
    /// A person's message: recorded.
    Message,
    /// An edit of an earlier message (`message_changed`): recorded, linked to the original.
    Edit,
    /// A deletion (`message_deleted`): recorded, linked to the original, without its text.
    Delete,
    /// Not a person's message: skipped, for the reason given.
    Skip(&'static str),
}

/// Slack's message subtypes, decided one by one
/// (<https://api.slack.com/events/message#subtypes>). A subtype not named here is recorded if it
/// has a user (a person wrote it), so a new kind of message is never dropped silently.
fn slack_kind(subtype: Option<&str>) -> SlackKind {
    match subtype {
        // A person's message: plain, with files (a photo with its caption), a thread reply also
        // sent to the channel, a /me message.
        None | Some("file_share" | "thread_broadcast" | "me_message") => SlackKind::Message,
        Some("message_changed") => SlackKind::Edit,
        Some("message_deleted") => SlackKind::Delete,
        // A notice that a thread got a reply: the reply itself arrives as its own event.
        Some("message_replied") => SlackKind::Skip("message_replied"),
        // Posts by bots and integrations, ours included (our own posts would loop back).
        Some("bot_message") => SlackKind::Skip("bot_message"),
        // Channel membership and housekeeping notices written by Slack, not by a person.
        Some(
            "channel_join" | "channel_leave" | "channel_topic" | "channel_purpose" | "channel_name" | "channel_archive" | "channel_unarchive"
            | "channel_convert_to_private" | "channel_convert_to_public" | "group_join" | "group_leave" | "group_topic" | "group_purpose"
            | "group_name" | "group_archive" | "group_unarchive" | "pinned_item" | "unpinned_item" | "reminder_add" | "bot_add"
            | "bot_remove" | "ekm_access_denied" | "channel_posting_permissions" | "huddle_thread" | "assistant_app_thread",
        ) => SlackKind::Skip("slack_notice"),
        Some(_) => SlackKind::Message,
    }
}

/// Whether `m` (an event, or the `message` of a `message_changed`) was posted by our own bot: by
/// `bot_id` when the account names it, else by any bot (without the id, ours cannot be told
/// from another integration's, and a bot is not a customer).
fn is_our_bot(m: &Value, our_bot_id: Option<&str>) -> bool {
    match (m.get("bot_id").and_then(Value::as_str), our_bot_id) {
        (Some(id), Some(ours)) => id == ours,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn slack_ms(ts: &str, field: &'static str) -> Result<i64, ConnectorError> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
    Ok(secs_ms(secs, field)? + frac.get(..3).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0))
}

/// Parses a Slack Events API body. `our_bot_id` is the account's bot (its own posts are echoes).
/// Every message subtype is decided in `slack_kind`: a person's message (files and thread
/// broadcasts included) is recorded, edits and deletions are recorded linked to the original, and
/// only notices and bot posts are skipped.
pub fn slack(body: &[u8], our_bot_id: Option<&str>) -> Result<SlackPayload, ConnectorError> {
    let root: Value = serde_json::from_slice(body).map_err(|_| invalid("body", "is not JSON"))?;
    match root.get("type").and_then(Value::as_str) {
        Some("url_verification") => Ok(SlackPayload::UrlVerification(str_at(&root, "challenge", "challenge")?.to_owned())),
        Some("event_callback") => {
            let event_id = str_at(&root, "event_id", "event_id")?.to_owned();
            let team_id = str_at(&root, "team_id", "team_id")?.to_owned();
            let event = root.get("event").ok_or_else(|| invalid("event", "is missing"))?;
            if event.get("type").and_then(Value::as_str) != Some("message") {
                return Ok(SlackPayload::Ignored("not_a_message"));
            }
            let channel = str_at(event, "channel", "event.channel")?.to_owned();
            let kind = slack_kind(event.get("subtype").and_then(Value::as_str));
            // The message as it now stands: the event itself, or the edited message inside it.
            let (message, kind_name, message_type) = match kind {
                SlackKind::Skip(reason) => return Ok(SlackPayload::Ignored(reason)),
                SlackKind::Message => (event, "message", event.get("subtype").and_then(Value::as_str).unwrap_or("text")),
                SlackKind::Edit => (event.get("message").ok_or_else(|| invalid("event.message", "is missing"))?, "edit", "message_changed"),
                // Who wrote it is only in the previous message; its text is not kept.
                SlackKind::Delete => (event.get("previous_message").unwrap_or(&Value::Null), "delete", "message_deleted"),
            };
            if is_our_bot(event, our_bot_id) || is_our_bot(message, our_bot_id) {
                return Ok(SlackPayload::Ignored("our_bot"));
            }
            let Some(user) = message.get("user").and_then(Value::as_str).filter(|u| !u.is_empty()) else {
                return match kind_name {
                    // A deletion whose author Slack did not send cannot be tied to a customer.
                    "delete" => Ok(SlackPayload::Ignored("delete_without_author")),
                    "edit" => Err(invalid("event.message.user", "is missing or not a string")),
                    _ => Err(invalid("event.user", "is missing or not a string")),
                };
            };
            // The event's own time; for an edit or deletion, the original's ts names the message.
            let event_ts = str_at(event, "ts", "event.ts")?;
            let original_ts = match kind_name {
                "edit" => Some(str_at(message, "ts", "event.message.ts")?),
                "delete" => Some(str_at(event, "deleted_ts", "event.deleted_ts")?),
                _ => None,
            };
            let provider_message_id = match (kind_name, original_ts) {
                ("message", _) | (_, None) => format!("{channel}:{event_ts}"),
                (k, Some(orig)) => format!("{channel}:{orig}:{k}:{event_ts}"),
            };
            let attachments = message
                .get("files")
                .and_then(Value::as_array)
                .map(|files| {
                    files
                        .iter()
                        .map(|f| Attachment {
                            content_type: opt_str(f, "mimetype"),
                            filename: opt_str(f, "name"),
                            provider_ref: opt_str(f, "url_private").or_else(|| opt_str(f, "id")),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let thread_ts = opt_str(message, "thread_ts").or_else(|| original_ts.map(str::to_owned)).unwrap_or_else(|| event_ts.to_owned());
            let identity = format!("{team_id}:{user}");
            Ok(SlackPayload::Message {
                event_id: event_id.clone(),
                team_id: team_id.clone(),
                inbound: Box::new(Inbound {
                    message: NormalizedMessage {
                        schema: SCHEMA_VERSION,
                        channel: "slack".into(),
                        direction: "inbound".into(),
                        kind: kind_name.into(),
                        provider_message_id,
                        account: team_id,
                        channel_identity: identity.clone(),
                        sender_name: None,
                        message_type: message_type.into(),
                        subject: None,
                        text: if kind_name == "delete" { None } else { opt_str(message, "text") },
                        attachments: if kind_name == "delete" { Vec::new() } else { attachments },
                        provider_timestamp_ms: slack_ms(event_ts, "event.ts")?,
                        reply_to: None,
                        thread: Some(format!("{channel}:{thread_ts}")),
                        status: None,
                        linked_event_id: None,
                        business_address: None,
                        edits: original_ts.map(|t| format!("{channel}:{t}")),
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
            business_address: (!is_status).then(|| to.clone()),
            edits: None,
        },
        identity: RawIdentity::Phone(customer.trim_start_matches("whatsapp:").to_owned()),
    };
    Ok((account, inbound))
}

/// Rebuilds a MIME message from Mailgun's parsed fields (a route whose URL does not end in
/// "mime"): the headers from `message-headers` (or the fields of the same names), the text from
/// `body-plain`, and one part per attached file, so `email` reads it like any other mail. Header
/// values lose any CR or LF (no header can be injected); UTF-8 is kept as RFC 6532 allows.
pub fn mime_from_mailgun_fields(
    fields: &std::collections::HashMap<String, String>,
    files: &[(Option<String>, Option<String>, axum::body::Bytes)],
) -> Result<Vec<u8>, ConnectorError> {
    use base64::Engine as _;
    let listed: Vec<(String, String)> = fields
        .get("message-headers")
        .and_then(|h| serde_json::from_str::<Vec<(String, String)>>(h).ok())
        .unwrap_or_default();
    let header = |name: &str| {
        listed
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .or_else(|| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()))
    };
    let clean = |v: String| v.replace(['\r', '\n'], " ");
    let from = header("From").or_else(|| fields.get("sender").cloned()).ok_or_else(|| invalid("from", "is missing"))?;
    let boundary = format!("ledger-{}", uuid::Uuid::new_v4().simple());
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", clean(from)));
    for name in ["To", "Subject", "Message-Id", "In-Reply-To", "References", "Date"] {
        if let Some(v) = header(name) {
            out.push_str(&format!("{name}: {}\r\n", clean(v)));
        }
    }
    out.push_str(&format!("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"));
    let b64 = |bytes: &[u8]| {
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        text.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\r\n")
    };
    let text = fields.get("body-plain").map(String::as_str).unwrap_or_default();
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64(text.as_bytes())
    ));
    for (file_name, content_type, bytes) in files {
        let name = clean(file_name.clone().unwrap_or_else(|| "attachment".into())).replace('"', "'");
        let ct = clean(content_type.clone().unwrap_or_else(|| "application/octet-stream".into()));
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: {ct}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            b64(bytes)
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    Ok(out.into_bytes())
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
            business_address: None,
            edits: None,
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
            business_address: None,
            edits: None,
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
        match slack(&fixture("slack-event-message.json"), None).unwrap() {
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

    /// One realistic event per Slack message subtype (Events API shapes), with what must happen.
    #[test]
    fn every_slack_subtype_is_decided() {
        let wrap = |event: &str| format!(r#"{{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{event}}}"#);
        let record = |event: &str, bot: Option<&str>| match slack(wrap(event).as_bytes(), bot).unwrap() {
            SlackPayload::Message { inbound, .. } => Some(inbound.message),
            SlackPayload::Ignored(_) => None,
            SlackPayload::UrlVerification(_) => panic!("not a verification"),
        };
        let plain = record(r#"{"type":"message","channel":"C1","user":"U1","text":"hello","ts":"1700000000.000100"}"#, None).unwrap();
        assert_eq!((plain.kind.as_str(), plain.message_type.as_str(), plain.text.as_deref()), ("message", "text", Some("hello")));
        let photo = record(
            r#"{"type":"message","subtype":"file_share","channel":"C1","user":"U1","text":"my broken box","ts":"1700000001.000200",
                "files":[{"id":"F1","name":"box.jpg","mimetype":"image/jpeg","url_private":"https://files.slack.com/files-pri/T1-F1/box.jpg"}]}"#,
            None,
        )
        .expect("a photo with its text is recorded");
        assert_eq!(photo.text.as_deref(), Some("my broken box"));
        assert_eq!(photo.message_type, "file_share");
        assert_eq!(photo.attachments[0].filename.as_deref(), Some("box.jpg"));
        assert_eq!(photo.attachments[0].content_type.as_deref(), Some("image/jpeg"));
        assert!(photo.attachments[0].provider_ref.as_deref().unwrap().contains("files-pri"));
        let broadcast = record(
            r#"{"type":"message","subtype":"thread_broadcast","channel":"C1","user":"U1","text":"any news?","ts":"1700000002.000300","thread_ts":"1700000000.000100"}"#,
            None,
        )
        .expect("a thread reply sent to the channel is recorded");
        assert_eq!(broadcast.thread.as_deref(), Some("C1:1700000000.000100"));
        assert_eq!(broadcast.text.as_deref(), Some("any news?"));
        let me = record(r#"{"type":"message","subtype":"me_message","channel":"C1","user":"U1","text":"waves","ts":"1700000003.000400"}"#, None);
        assert_eq!(me.unwrap().text.as_deref(), Some("waves"));
        let edit = record(
            r#"{"type":"message","subtype":"message_changed","channel":"C1","ts":"1700000009.000900","hidden":true,
                "message":{"type":"message","user":"U1","text":"hello, fixed","ts":"1700000000.000100","edited":{"user":"U1","ts":"1700000009.000000"}},
                "previous_message":{"type":"message","user":"U1","text":"hello","ts":"1700000000.000100"}}"#,
            None,
        )
        .expect("an edit is recorded");
        assert_eq!((edit.kind.as_str(), edit.text.as_deref(), edit.edits.as_deref()), ("edit", Some("hello, fixed"), Some("C1:1700000000.000100")));
        assert_ne!(edit.provider_message_id, plain.provider_message_id, "an edit is its own event");
        let delete = record(
            r#"{"type":"message","subtype":"message_deleted","channel":"C1","ts":"1700000010.001000","deleted_ts":"1700000000.000100","hidden":true,
                "previous_message":{"type":"message","user":"U1","text":"hello","ts":"1700000000.000100"}}"#,
            None,
        )
        .expect("a deletion is recorded");
        assert_eq!((delete.kind.as_str(), delete.text.as_deref(), delete.edits.as_deref()), ("delete", None, Some("C1:1700000000.000100")));
        assert_eq!(delete.channel_identity, "T1:U1");
        // Skipped, each for its reason.
        let skipped = |event: &str, bot: Option<&str>| match slack(wrap(event).as_bytes(), bot).unwrap() {
            SlackPayload::Ignored(reason) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(skipped(r#"{"type":"message","subtype":"message_replied","channel":"C1","ts":"1","message":{"user":"U1","ts":"0"}}"#, None), "message_replied");
        assert_eq!(skipped(r#"{"type":"message","subtype":"bot_message","channel":"C1","bot_id":"B9","text":"x","ts":"1"}"#, None), "bot_message");
        assert_eq!(skipped(r#"{"type":"message","subtype":"channel_join","channel":"C1","user":"U1","text":"<@U1> has joined","ts":"1"}"#, None), "slack_notice");
        // Our bot's echo (chat.postMessage comes back with our bot_id and no subtype).
        let echo = r#"{"type":"message","channel":"C1","user":"U0BOT","bot_id":"B1","text":"We got your message","ts":"1"}"#;
        assert_eq!(skipped(echo, Some("B1")), "our_bot");
        assert_eq!(skipped(echo, None), "our_bot");
        assert!(record(echo, Some("B2")).is_some(), "another integration's post is not our echo");
        let our_edit = r#"{"type":"message","subtype":"message_changed","channel":"C1","ts":"2","message":{"user":"U0BOT","bot_id":"B1","text":"x","ts":"1"}}"#;
        assert_eq!(skipped(our_edit, Some("B1")), "our_bot");
        // A subtype Slack adds later, written by a person, is recorded rather than dropped.
        let novel = record(r#"{"type":"message","subtype":"brand_new_kind","channel":"C1","user":"U1","text":"still a message","ts":"1"}"#, None).unwrap();
        assert_eq!((novel.message_type.as_str(), novel.text.as_deref()), ("brand_new_kind", Some("still a message")));
    }

    #[test]
    fn twilio_whatsapp_keeps_channel_and_business_number() {
        let body = b"MessageSid=SM1&AccountSid=AC1&From=whatsapp%3A%2B5511912345678&To=whatsapp%3A%2B14155238886&Body=Oi&NumMedia=0";
        let (_, inbound) = twilio(body, 1).unwrap();
        assert_eq!(inbound.message.channel, "whatsapp");
        assert_eq!(inbound.message.channel_identity, "whatsapp:+5511912345678");
        assert_eq!(inbound.message.business_address.as_deref(), Some("whatsapp:+14155238886"));
        assert_eq!(inbound.identity, RawIdentity::Phone("+5511912345678".into()));
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
        assert!(slack(b"nope", None).unwrap_err().to_string().contains("body"));
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
                let _ = slack(b, None);
                let _ = twilio(b, 0);
                let _ = email(b, "support@example.com");
                let _ = teams(b);
            }
        }
    }
}
