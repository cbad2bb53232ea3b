//! The webhook routes, mounted on the server's HTTP port: `/webhooks/whatsapp` (GET handshake,
//! POST), `/webhooks/slack`, `/webhooks/twilio`, `/webhooks/email` and `/webhooks/email/mime`
//! (raw MIME from a relay, or Mailgun's form in either encoding), `/webhooks/teams` (Bot
//! Framework JWT). Every POST: body size limit (413), signature over the raw bytes (401), parse
//! (400 naming the field), normalize, resolve, append; only then 200. A failed append answers 5xx
//! so the provider redelivers. Every refusal is logged at WARN (rate-limited, with a hint and
//! never a secret or payload) and counted in `ledger_webhook_refused_total{channel, reason}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ledger::types::{Region, UnixMillis};

use crate::config::ConnectorsConfig;
use crate::error::ConnectorError;
use crate::ingest::{Ingestor, Outcome};
use crate::normalize::{self, SlackPayload};
use crate::signatures;

/// The webhook receivers' shared state.
pub struct Webhooks {
    ingestor: Arc<Ingestor>,
    config: ConnectorsConfig,
    /// One verifier per configured Teams bot, in configuration order.
    teams: Vec<crate::teams::TeamsVerifier>,
    refusals: RefusalLog,
}

/// At most one WARN line per channel and reason in this interval; the rest are counted into
/// the next line's `suppressed` (and all of them in the metric).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limits refusal log lines, so a misconfigured provider retrying for hours leaves a trace
/// without flooding the log.
#[derive(Default)]
struct RefusalLog {
    last: Mutex<HashMap<(&'static str, &'static str), (Instant, u64)>>,
}

impl RefusalLog {
    /// Whether to log now, and how many refusals were suppressed since the last line.
    fn admit(&self, channel: &'static str, reason: &'static str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match last.get_mut(&(channel, reason)) {
            Some((at, suppressed)) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert((channel, reason), (now, 0));
                Some(0)
            }
        }
    }
}

/// What to check, per channel and reason: the setting that most often causes the refusal.
fn refusal_hint(channel: &str, reason: &str) -> &'static str {
    match (channel, reason) {
        (_, "too_large") => "the provider sent more than connectors.body_bytes_max; raise it if such bodies are legitimate",
        (_, "malformed") => "the body does not have the provider's format; the error names the field",
        (_, "unknown_account") => "the payload's account (phone_number_id, team_id, AccountSid) is not configured for the secret that verified it",
        (_, "stale_timestamp") => "the signed timestamp is more than 5 minutes off: check this server's clock",
        ("whatsapp", _) => "check connectors.whatsapp.app_secret: it must be the Meta app's secret",
        ("slack", _) => "check connectors.slack.signing_secret: it must be the Slack app's signing secret",
        ("twilio", _) => "Twilio signs the exact URL it called: connectors.public_url plus the path must equal the webhook URL set in Twilio; check auth_token too",
        ("email", _) => "check connectors.email.mailgun_signing_key (Mailgun) or raw_mime_secret (a relay's X-Ledger-Signature)",
        ("teams", _) => "check connectors.teams app_id, issuer and the JWKS file",
        _ => "check the channel's secret in [connectors]",
    }
}

impl Webhooks {
    /// Receivers over `ingestor` with the configured accounts. Fails if a Teams JWKS file cannot
    /// be read.
    pub fn new(ingestor: Arc<Ingestor>, config: ConnectorsConfig) -> Result<Arc<Self>, String> {
        let teams = Self::teams_verifiers(&config)?;
        Ok(Arc::new(Webhooks { ingestor, config, teams, refusals: RefusalLog::default() }))
    }

    /// Checks what the receivers will need from the filesystem (the Teams JWKS files), so a
    /// server can refuse a configuration before it creates anything.
    pub fn check_config(config: &ConnectorsConfig) -> Result<(), String> {
        Self::teams_verifiers(config).map(drop)
    }

    fn teams_verifiers(config: &ConnectorsConfig) -> Result<Vec<crate::teams::TeamsVerifier>, String> {
        let mut teams = Vec::new();
        for t in &config.teams {
            let jwks = std::fs::read(&t.jwks_path).map_err(|e| format!("reading the Teams JWKS {}: {e}", t.jwks_path.display()))?;
            teams.push(crate::teams::TeamsVerifier::from_jwks(&jwks, &t.issuer, &t.app_id)?);
        }
        Ok(teams)
    }

    /// The ingestor, for status lookups.
    pub fn ingestor(&self) -> &Ingestor {
        &self.ingestor
    }
}

/// The routes, with the body limit applied.
pub fn router(state: Arc<Webhooks>) -> Router {
    let limit = state.config.body_bytes_max;
    Router::new()
        .route("/webhooks/whatsapp", get(whatsapp_verify).post(whatsapp))
        .route("/webhooks/slack", post(slack))
        .route("/webhooks/twilio", post(twilio))
        .route("/webhooks/email", post(email))
        // Mailgun posts the raw MIME (`body-mime`) only to a route URL ending in "mime".
        .route("/webhooks/email/mime", post(email))
        .route("/webhooks/teams", post(teams))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The body, or 413 when it is over the limit (a rejection axum would otherwise answer unlogged).
fn body_of(s: &Webhooks, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ConnectorError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ConnectorError::TooLarge { limit: s.config.body_bytes_max },
        _ => ConnectorError::Invalid { field: "body", reason: "could not be read".into() },
    })
}

/// Answers a webhook. A refusal is logged at WARN (rate-limited per channel and reason) with the
/// account when one is known and a hint, and counted; the error text names a field or a check,
/// never a secret, a value or the payload.
fn reply(s: &Webhooks, result: Result<Response, ConnectorError>, channel: &'static str, account: Option<&str>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            metrics::counter!("ledger_webhook_requests_total", "channel" => channel, "status" => status.as_str().to_owned()).increment(1);
            if status.is_server_error() {
                tracing::warn!(channel, error = %e, "webhook not stored; the provider will retry");
            } else {
                let reason = e.refusal_reason();
                metrics::counter!("ledger_webhook_refused_total", "channel" => channel, "reason" => reason).increment(1);
                if let Some(suppressed) = s.refusals.admit(channel, reason) {
                    tracing::warn!(
                        channel,
                        account = account.unwrap_or("unknown"),
                        status = status.as_u16(),
                        reason,
                        error = %e,
                        suppressed,
                        hint = refusal_hint(channel, reason),
                        "webhook refused"
                    );
                }
            }
            json(status, &serde_json::json!({ "error": e.to_string(), "code": e.code().as_str() }))
        }
    }
}

fn ok(channel: &'static str, appended: usize) -> Response {
    metrics::counter!("ledger_webhook_requests_total", "channel" => channel, "status" => "200").increment(1);
    json(StatusCode::OK, &serde_json::json!({ "ok": true, "appended": appended }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn region(name: &str) -> Result<Region, ConnectorError> {
    Region::parse(name, "account region").map_err(ConnectorError::from)
}

#[derive(serde::Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn whatsapp_verify(State(s): State<Arc<Webhooks>>, Query(q): Query<Handshake>) -> Response {
    let token_ok = q.verify_token.as_deref().is_some_and(|t| s.config.whatsapp.iter().any(|a| a.verify_token.expose() == t));
    match (q.mode.as_deref(), q.challenge) {
        (Some("subscribe"), Some(challenge)) if token_ok => (StatusCode::OK, challenge).into_response(),
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

async fn whatsapp(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut account = None;
    let result = match body_of(&s, body) {
        Ok(body) => whatsapp_inner(&s, &headers, &body, &mut account).await,
        Err(e) => Err(e),
    };
    reply(&s, result, "whatsapp", account.as_deref())
}

async fn whatsapp_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8], named: &mut Option<String>) -> Result<Response, ConnectorError> {
    let sig = header(headers, "x-hub-signature-256");
    // One app secret signs for all of an app's numbers: any configured secret that verifies the
    // raw bytes admits the body, and only that secret's numbers may appear in it.
    let secret = s
        .config
        .whatsapp
        .iter()
        .find(|a| signatures::whatsapp(a.app_secret.expose(), sig, body).is_ok())
        .map(|a| a.app_secret.expose().to_owned())
        .ok_or_else(|| signatures::whatsapp("", sig, body).err().unwrap_or(ConnectorError::Unauthorized("does not match")))?;
    let payload = normalize::whatsapp(body)?;
    let mut accounts = Vec::new();
    for (number, _) in &payload.changes {
        *named = Some(number.clone());
        let account = s
            .config
            .whatsapp
            .iter()
            .find(|a| a.phone_number_id == *number && a.app_secret.expose() == secret)
            .ok_or(ConnectorError::UnknownAccount("whatsapp"))?;
        accounts.push((region(&account.region)?, account.default_phone_region.clone()));
    }
    let mut appended = 0;
    for ((_, messages), (region, phone_region)) in payload.changes.into_iter().zip(accounts) {
        for inbound in messages {
            appended += usize::from(s.ingestor.ingest(&region, &phone_region, inbound).await? == Outcome::Appended);
        }
    }
    Ok(ok("whatsapp", appended))
}

async fn slack(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut account = None;
    let result = match body_of(&s, body) {
        Ok(body) => slack_inner(&s, &headers, &body, &mut account).await,
        Err(e) => Err(e),
    };
    reply(&s, result, "slack", account.as_deref())
}

async fn slack_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8], named: &mut Option<String>) -> Result<Response, ConnectorError> {
    let (ts, sig) = (header(headers, "x-slack-request-timestamp"), header(headers, "x-slack-signature"));
    let now = UnixMillis::now().0 / 1000;
    let mut last_err = ConnectorError::UnknownAccount("slack");
    let mut verified = None;
    for a in &s.config.slack {
        match signatures::slack(a.signing_secret.expose(), ts, sig, body, now) {
            Ok(()) => {
                verified = Some(a);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let account = verified.ok_or(last_err)?;
    *named = Some(account.team_id.clone());
    match normalize::slack(body, Some(account.bot_id.as_str()).filter(|b| !b.is_empty()))? {
        SlackPayload::UrlVerification(challenge) => Ok(json(StatusCode::OK, &serde_json::json!({ "challenge": challenge }))),
        SlackPayload::Ignored(reason) => {
            // Named and counted: a skip is a decision (`normalize::slack_kind`), never silent.
            metrics::counter!("ledger_webhook_skipped_total", "channel" => "slack", "reason" => reason).increment(1);
            tracing::debug!(channel = "slack", reason, "slack event carries no customer message; not recorded");
            Ok(ok("slack", 0))
        }
        SlackPayload::Message { team_id, inbound, .. } => {
            if team_id != account.team_id {
                return Err(ConnectorError::UnknownAccount("slack"));
            }
            let outcome = s.ingestor.ingest(&region(&account.region)?, "US", *inbound).await?;
            Ok(ok("slack", usize::from(outcome == Outcome::Appended)))
        }
    }
}

async fn twilio(State(s): State<Arc<Webhooks>>, headers: HeaderMap, uri: Uri, body: Result<Bytes, BytesRejection>) -> Response {
    let mut account = None;
    let result = match body_of(&s, body) {
        Ok(body) => twilio_inner(&s, &headers, &uri, &body, &mut account).await,
        Err(e) => Err(e),
    };
    reply(&s, result, "twilio", account.as_deref())
}

async fn twilio_inner(s: &Webhooks, headers: &HeaderMap, uri: &Uri, body: &[u8], named: &mut Option<String>) -> Result<Response, ConnectorError> {
    // Twilio signs the URL it called: the configured public base plus the path and query.
    let url = format!("{}{}", s.config.public_url.trim_end_matches('/'), uri.path_and_query().map_or("/webhooks/twilio", |p| p.as_str()));
    let sig = header(headers, "x-twilio-signature");
    let mut last_err = ConnectorError::UnknownAccount("twilio");
    let mut verified = None;
    for a in &s.config.twilio {
        match signatures::twilio(a.auth_token.expose(), &url, sig, body) {
            Ok(()) => {
                verified = Some(a);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let account = verified.ok_or(last_err)?;
    *named = Some(account.account_sid.clone());
    let (account_sid, inbound) = normalize::twilio(body, UnixMillis::now().0)?;
    if account_sid != account.account_sid {
        return Err(ConnectorError::UnknownAccount("twilio"));
    }
    let outcome = s.ingestor.ingest(&region(&account.region)?, &account.default_phone_region, inbound).await?;
    Ok(ok("twilio", usize::from(outcome == Outcome::Appended)))
}

async fn email(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut account = None;
    let result = match body_of(&s, body) {
        Ok(body) => email_inner(&s, &headers, body, &mut account).await,
        Err(e) => Err(e),
    };
    reply(&s, result, "email", account.as_deref())
}

/// Mailgun's fields, from either form encoding: text fields, and the files of a multipart post
/// (name, file name, content type, bytes).
#[derive(Default)]
struct MailgunForm {
    fields: HashMap<String, String>,
    files: Vec<(Option<String>, Option<String>, Bytes)>,
}

/// Reads Mailgun's post: `application/x-www-form-urlencoded`, or `multipart/form-data` (how
/// Mailgun posts a mail with attachments, and the raw-MIME forward of a large mail).
async fn mailgun_form(content_type: &str, body: Bytes) -> Result<MailgunForm, ConnectorError> {
    let mut form = MailgunForm::default();
    if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type).map_err(|_| ConnectorError::Invalid { field: "content-type", reason: "has no multipart boundary".into() })?;
        let stream = tokio_stream::once(Ok::<Bytes, std::io::Error>(body));
        let mut multipart = multer::Multipart::new(stream, boundary);
        let bad = |_| ConnectorError::Invalid { field: "body", reason: "is not valid multipart/form-data".into() };
        while let Some(field) = multipart.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(ToString::to_string);
            if file_name.is_some() && name != "body-mime" {
                form.files.push((file_name, content_type, field.bytes().await.map_err(bad)?));
            } else {
                let text = field.text().await.map_err(bad)?;
                form.fields.insert(name, text);
            }
        }
    } else {
        form.fields = form_urlencoded::parse(&body).into_owned().collect();
    }
    Ok(form)
}

async fn email_inner(s: &Webhooks, headers: &HeaderMap, body: Bytes, named: &mut Option<String>) -> Result<Response, ConnectorError> {
    let content_type = header(headers, "content-type").unwrap_or_default().to_ascii_lowercase();
    let (account, raw_mime): (&crate::config::EmailAccount, Vec<u8>) = if content_type.starts_with("message/rfc822") {
        // A relay (an MTA pipe) signs the raw message with the account's secret.
        let sig = header(headers, "x-ledger-signature");
        let account = s
            .config
            .email
            .iter()
            .filter(|a| !a.raw_mime_secret.expose().is_empty())
            .find(|a| signatures::raw_mime(a.raw_mime_secret.expose(), sig, &body).is_ok())
            .ok_or(ConnectorError::Unauthorized("X-Ledger-Signature does not match"))?;
        (account, body.to_vec())
    } else {
        // Mailgun signs timestamp + token, in either form encoding. The multipart boundary is
        // case-sensitive: parse it from the header as sent.
        let form = mailgun_form(header(headers, "content-type").unwrap_or_default(), body).await?;
        let field = |k: &str| form.fields.get(k).map(String::as_str);
        let (Some(ts), Some(token), Some(sig)) = (field("timestamp"), field("token"), field("signature")) else {
            return Err(ConnectorError::Unauthorized("timestamp, token and signature are required"));
        };
        let fresh = ts.parse::<i64>().is_ok_and(|t| (UnixMillis::now().0 / 1000 - t).abs() <= signatures::SLACK_TIMESTAMP_SKEW_SECS);
        if !fresh {
            return Err(ConnectorError::Unauthorized("timestamp is more than 5 minutes from now"));
        }
        let account = s
            .config
            .email
            .iter()
            .filter(|a| !a.mailgun_signing_key.expose().is_empty())
            .find(|a| signatures::mailgun(a.mailgun_signing_key.expose(), ts, token, sig).is_ok())
            .ok_or(ConnectorError::Unauthorized("does not match"))?;
        // The forward-MIME route carries the raw message; a parsed-fields route (a URL not ending
        // in "mime") is rebuilt into one, attachments included, so neither loses the mail.
        let mime = match field("body-mime") {
            Some(mime) => mime.as_bytes().to_vec(),
            None => normalize::mime_from_mailgun_fields(&form.fields, &form.files)?,
        };
        (account, mime)
    };
    *named = Some(account.address.clone());
    let inbound = normalize::email(&raw_mime, &account.address)?;
    let outcome = s.ingestor.ingest(&region(&account.region)?, "US", inbound).await?;
    Ok(ok("email", usize::from(outcome == Outcome::Appended)))
}

async fn teams(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut account = None;
    let result = match body_of(&s, body) {
        Ok(body) => teams_inner(&s, &headers, &body, &mut account).await,
        Err(e) => Err(e),
    };
    reply(&s, result, "teams", account.as_deref())
}

async fn teams_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8], named: &mut Option<String>) -> Result<Response, ConnectorError> {
    let auth = header(headers, "authorization");
    let mut last_err = ConnectorError::UnknownAccount("teams");
    let mut verified = None;
    for (account, verifier) in s.config.teams.iter().zip(&s.teams) {
        match verifier.verify(auth) {
            Ok(()) => {
                verified = Some(account);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let account = verified.ok_or(last_err)?;
    *named = Some(account.app_id.clone());
    let Some(inbound) = normalize::teams(body)? else { return Ok(ok("teams", 0)) };
    let outcome = s.ingestor.ingest(&region(&account.region)?, "US", inbound).await?;
    Ok(ok("teams", usize::from(outcome == Outcome::Appended)))
}
