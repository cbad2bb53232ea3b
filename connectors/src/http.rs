//! The webhook routes, mounted on the server's HTTP port: `/webhooks/whatsapp` (GET handshake,
//! POST), `/webhooks/slack`, `/webhooks/twilio`, `/webhooks/email` (raw MIME from a relay, or
//! Mailgun's form), `/webhooks/teams` (Bot Framework JWT). Every POST: body size limit (413), signature over
//! the raw bytes (401), parse (400 naming the field), normalize, resolve, append; only then 200. A
//! failed append answers 5xx so the provider redelivers.

use std::sync::Arc;

use axum::body::Bytes;
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
}

impl Webhooks {
    /// Receivers over `ingestor` with the configured accounts. Fails if a Teams JWKS file cannot
    /// be read.
    pub fn new(ingestor: Arc<Ingestor>, config: ConnectorsConfig) -> Result<Arc<Self>, String> {
        let mut teams = Vec::new();
        for t in &config.teams {
            let jwks = std::fs::read(&t.jwks_path).map_err(|e| format!("reading the Teams JWKS {}: {e}", t.jwks_path.display()))?;
            teams.push(crate::teams::TeamsVerifier::from_jwks(&jwks, &t.issuer, &t.app_id)?);
        }
        Ok(Arc::new(Webhooks { ingestor, config, teams }))
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
        .route("/webhooks/teams", post(teams))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn reply(result: Result<Response, ConnectorError>, channel: &'static str) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            metrics::counter!("ledger_webhook_requests_total", "channel" => channel, "status" => status.as_str().to_owned()).increment(1);
            if status.is_server_error() {
                tracing::warn!(channel, error = %e, "webhook not stored; the provider will retry");
            } else {
                tracing::debug!(channel, error = %e, "webhook refused");
            }
            json(status, &serde_json::json!({ "error": e.to_string() }))
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

async fn whatsapp(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Bytes) -> Response {
    reply(whatsapp_inner(&s, &headers, &body).await, "whatsapp")
}

async fn whatsapp_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8]) -> Result<Response, ConnectorError> {
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

async fn slack(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Bytes) -> Response {
    reply(slack_inner(&s, &headers, &body).await, "slack")
}

async fn slack_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8]) -> Result<Response, ConnectorError> {
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
    match normalize::slack(body)? {
        SlackPayload::UrlVerification(challenge) => Ok(json(StatusCode::OK, &serde_json::json!({ "challenge": challenge }))),
        SlackPayload::Ignored => Ok(ok("slack", 0)),
        SlackPayload::Message { team_id, inbound, .. } => {
            if team_id != account.team_id {
                return Err(ConnectorError::UnknownAccount("slack"));
            }
            let outcome = s.ingestor.ingest(&region(&account.region)?, "US", *inbound).await?;
            Ok(ok("slack", usize::from(outcome == Outcome::Appended)))
        }
    }
}

async fn twilio(State(s): State<Arc<Webhooks>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    reply(twilio_inner(&s, &headers, &uri, &body).await, "twilio")
}

async fn twilio_inner(s: &Webhooks, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Result<Response, ConnectorError> {
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
    let (account_sid, inbound) = normalize::twilio(body, UnixMillis::now().0)?;
    if account_sid != account.account_sid {
        return Err(ConnectorError::UnknownAccount("twilio"));
    }
    let outcome = s.ingestor.ingest(&region(&account.region)?, &account.default_phone_region, inbound).await?;
    Ok(ok("twilio", usize::from(outcome == Outcome::Appended)))
}

async fn email(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Bytes) -> Response {
    reply(email_inner(&s, &headers, &body).await, "email")
}

async fn email_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8]) -> Result<Response, ConnectorError> {
    let content_type = header(headers, "content-type").unwrap_or_default().to_ascii_lowercase();
    let (account, raw_mime): (&crate::config::EmailAccount, Vec<u8>) = if content_type.starts_with("message/rfc822") {
        // A relay (an MTA pipe) signs the raw message with the account's secret.
        let sig = header(headers, "x-ledger-signature");
        let account = s
            .config
            .email
            .iter()
            .filter(|a| !a.raw_mime_secret.expose().is_empty())
            .find(|a| signatures::raw_mime(a.raw_mime_secret.expose(), sig, body).is_ok())
            .ok_or(ConnectorError::Unauthorized("X-Ledger-Signature does not match"))?;
        (account, body.to_vec())
    } else {
        // Mailgun signs timestamp + token; its "forward MIME" route carries the raw message.
        let form: std::collections::HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str);
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
        let mime = field("body-mime").ok_or_else(|| ConnectorError::Invalid { field: "body-mime", reason: "is required (use a forward-MIME route)".into() })?;
        (account, mime.as_bytes().to_vec())
    };
    let inbound = normalize::email(&raw_mime, &account.address)?;
    let outcome = s.ingestor.ingest(&region(&account.region)?, "US", inbound).await?;
    Ok(ok("email", usize::from(outcome == Outcome::Appended)))
}

async fn teams(State(s): State<Arc<Webhooks>>, headers: HeaderMap, body: Bytes) -> Response {
    reply(teams_inner(&s, &headers, &body).await, "teams")
}

async fn teams_inner(s: &Webhooks, headers: &HeaderMap, body: &[u8]) -> Result<Response, ConnectorError> {
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
    let Some(inbound) = normalize::teams(body)? else { return Ok(ok("teams", 0)) };
    let outcome = s.ingestor.ingest(&region(&account.region)?, "US", inbound).await?;
    Ok(ok("teams", usize::from(outcome == Outcome::Appended)))
}
