//! Channel accounts and webhook bounds, from the server's configuration file. Secrets have a
//! redacted `Debug` and are zeroized on drop.

use serde::{Deserialize, Serialize};

pub use ledger::secret::Secret;

/// A WhatsApp Business number.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppAccount {
    /// Meta's `phone_number_id` of the business number.
    pub phone_number_id: String,
    /// The app secret that signs webhooks (`X-Hub-Signature-256`).
    pub app_secret: Secret,
    /// The token Meta's verification handshake must present.
    pub verify_token: Secret,
    /// Region new customers of this number are created in.
    pub region: String,
    /// ISO 3166 region for phone numbers written without a country code.
    #[serde(default = "default_phone_region")]
    pub default_phone_region: String,
    /// The Cloud API access token for sending.
    #[serde(default)]
    pub access_token: Secret,
    /// The Cloud API base URL (a local fake provider in tests).
    #[serde(default = "default_graph_url")]
    pub api_base_url: String,
    /// Messages per second this number may send (Meta's default throughput is 80).
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
}

fn default_graph_url() -> String {
    "https://graph.facebook.com/v21.0".into()
}

fn default_messages_per_second() -> u32 {
    80
}

/// A Slack workspace.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlackAccount {
    /// The workspace's `team_id`.
    pub team_id: String,
    /// The app's signing secret.
    pub signing_secret: Secret,
    /// Region new customers are created in.
    pub region: String,
    /// The bot token for posting (`chat.postMessage`).
    #[serde(default)]
    pub bot_token: Secret,
    /// Our bot's `bot_id` (`B…`): its posts come back as events and are skipped. Empty: every
    /// bot's posts are skipped, since ours cannot be told from another integration's.
    #[serde(default)]
    pub bot_id: String,
    /// The Web API base URL (a local fake in tests).
    #[serde(default = "default_slack_url")]
    pub api_base_url: String,
}

fn default_slack_url() -> String {
    "https://slack.com/api".into()
}

/// A Twilio account (SMS, and WhatsApp via Twilio).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TwilioAccount {
    /// The `AccountSid`.
    pub account_sid: String,
    /// The auth token that signs webhooks (`X-Twilio-Signature`).
    pub auth_token: Secret,
    /// Region new customers are created in.
    pub region: String,
    /// ISO 3166 region for phone numbers written without a country code.
    #[serde(default = "default_phone_region")]
    pub default_phone_region: String,
    /// The number SendMessage sends from (E.164).
    #[serde(default)]
    pub from_number: String,
    /// The REST API base URL (a local fake in tests).
    #[serde(default = "default_twilio_url")]
    pub api_base_url: String,
}

fn default_twilio_url() -> String {
    "https://api.twilio.com".into()
}

/// A Teams bot (Bot Framework).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TeamsAccount {
    /// The bot's Microsoft app id: the tokens' audience.
    pub app_id: String,
    /// A JWKS file with the keys that sign Bot Framework tokens.
    pub jwks_path: std::path::PathBuf,
    /// The tokens' issuer.
    #[serde(default = "default_teams_issuer")]
    pub issuer: String,
    /// Region new customers are created in.
    pub region: String,
}

fn default_teams_issuer() -> String {
    "https://api.botframework.com".into()
}

/// An inbound email address.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmailAccount {
    /// The address mail arrives at.
    pub address: String,
    /// Region new customers are created in.
    pub region: String,
    /// Secret for raw MIME posts (`Content-Type: message/rfc822`), signed as
    /// `X-Ledger-Signature: sha256=<hex HMAC-SHA256(secret, body)>` by the relay.
    #[serde(default)]
    pub raw_mime_secret: Secret,
    /// Mailgun webhook signing key, for Mailgun's form posts.
    #[serde(default)]
    pub mailgun_signing_key: Secret,
}

fn default_phone_region() -> String {
    "US".into()
}

/// Everything the webhook receivers need.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorsConfig {
    /// An inbound message opens a new conversation after this long without one, in seconds.
    pub conversation_gap_secs: u64,
    /// Largest webhook body, in bytes (413 above).
    pub body_bytes_max: usize,
    /// The public base URL providers call (Twilio signs the full URL), e.g. `https://ledger.example.com`.
    pub public_url: String,
    /// WhatsApp Business numbers.
    pub whatsapp: Vec<WhatsAppAccount>,
    /// Slack workspaces.
    pub slack: Vec<SlackAccount>,
    /// Twilio accounts.
    pub twilio: Vec<TwilioAccount>,
    /// Teams bots.
    pub teams: Vec<TeamsAccount>,
    /// Inbound email addresses.
    pub email: Vec<EmailAccount>,
    /// WhatsApp's customer-service window: free-form text only this long after the customer's
    /// last inbound message, in seconds.
    pub whatsapp_window_secs: u64,
    /// Delivery attempts before an outbound message is recorded as failed.
    pub outbound_attempts_max: u32,
    /// Delay before the first retry of an outbound message, in milliseconds (doubles, capped at
    /// a minute).
    pub outbound_backoff_initial_ms: u64,
}

impl Default for ConnectorsConfig {
    fn default() -> Self {
        ConnectorsConfig {
            conversation_gap_secs: 24 * 3600,
            body_bytes_max: 1024 * 1024,
            public_url: "http://127.0.0.1:8080".into(),
            whatsapp: Vec::new(),
            slack: Vec::new(),
            twilio: Vec::new(),
            teams: Vec::new(),
            email: Vec::new(),
            whatsapp_window_secs: 24 * 3600,
            outbound_attempts_max: 8,
            outbound_backoff_initial_ms: 1_000,
        }
    }
}
