//! Provider signature schemes, each verified over the raw request bytes before anything is
//! parsed. Comparisons are constant-time (`Mac::verify_slice`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ConnectorError;

/// How far a Slack request timestamp may be from now, in seconds.
pub const SLACK_TIMESTAMP_SKEW_SECS: i64 = 300;

/// WhatsApp (Meta): `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`.
pub fn whatsapp(app_secret: &str, header: Option<&str>, body: &[u8]) -> Result<(), ConnectorError> {
    sha256_hex(app_secret, header.ok_or(ConnectorError::Unauthorized("header X-Hub-Signature-256 is missing"))?, body)
}

/// Raw MIME from a relay: `X-Ledger-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, the same
/// construction as Meta's.
pub fn raw_mime(secret: &str, header: Option<&str>, body: &[u8]) -> Result<(), ConnectorError> {
    sha256_hex(secret, header.ok_or(ConnectorError::Unauthorized("header X-Ledger-Signature is missing"))?, body)
}

fn sha256_hex(secret: &str, header: &str, body: &[u8]) -> Result<(), ConnectorError> {
    let hex_sig = header.strip_prefix("sha256=").ok_or(ConnectorError::Unauthorized("is not sha256=<hex>"))?;
    let sig = hex::decode(hex_sig).map_err(|_| ConnectorError::Unauthorized("is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| ConnectorError::Unauthorized("does not match"))
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + timestamp + ":" + body)>`, with
/// the timestamp within `SLACK_TIMESTAMP_SKEW_SECS` of `now_secs`.
pub fn slack(signing_secret: &str, timestamp: Option<&str>, header: Option<&str>, body: &[u8], now_secs: i64) -> Result<(), ConnectorError> {
    let timestamp = timestamp.ok_or(ConnectorError::Unauthorized("header X-Slack-Request-Timestamp is missing"))?;
    let ts: i64 = timestamp.parse().map_err(|_| ConnectorError::Unauthorized("timestamp is not a number"))?;
    if (now_secs - ts).abs() > SLACK_TIMESTAMP_SKEW_SECS {
        return Err(ConnectorError::Unauthorized("timestamp is more than 5 minutes from now"));
    }
    let header = header.ok_or(ConnectorError::Unauthorized("header X-Slack-Signature is missing"))?;
    let sig = header.strip_prefix("v0=").and_then(|h| hex::decode(h).ok()).ok_or(ConnectorError::Unauthorized("is not v0=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()).expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| ConnectorError::Unauthorized("does not match"))
}

/// Twilio: `X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + each POST param sorted by
/// name, as name + value, values URL-decoded))`.
pub fn twilio(auth_token: &str, url: &str, header: Option<&str>, form_body: &[u8]) -> Result<(), ConnectorError> {
    let header = header.ok_or(ConnectorError::Unauthorized("header X-Twilio-Signature is missing"))?;
    let sig = base64::engine::general_purpose::STANDARD.decode(header).map_err(|_| ConnectorError::Unauthorized("is not base64"))?;
    let mut params: Vec<(String, String)> = form_urlencoded::parse(form_body).into_owned().collect();
    params.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in &params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac.verify_slice(&sig).map_err(|_| ConnectorError::Unauthorized("does not match"))
}

/// Mailgun: `signature = hex HMAC-SHA256(signing key, timestamp + token)`.
pub fn mailgun(signing_key: &str, timestamp: &str, token: &str, signature: &str) -> Result<(), ConnectorError> {
    let sig = hex::decode(signature).map_err(|_| ConnectorError::Unauthorized("is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.verify_slice(&sig).map_err(|_| ConnectorError::Unauthorized("does not match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    /// Slack's worked example (fixtures README, from Slack's documentation).
    #[test]
    fn slack_vector_passes_and_any_change_fails() {
        let ts = "1531420618";
        let now = 1_531_420_618 + 10;
        slack(SLACK_SECRET, Some(ts), Some(SLACK_SIG), SLACK_BODY.as_bytes(), now).unwrap();
        let mut body = SLACK_BODY.as_bytes().to_vec();
        body[10] ^= 1;
        assert!(slack(SLACK_SECRET, Some(ts), Some(SLACK_SIG), &body, now).is_err(), "body");
        assert!(slack(SLACK_SECRET, Some("1531420619"), Some(SLACK_SIG), SLACK_BODY.as_bytes(), now).is_err(), "timestamp");
        assert!(slack("8f742231b10e8888abcd99yyyzzz85a6", Some(ts), Some(SLACK_SIG), SLACK_BODY.as_bytes(), now).is_err(), "secret");
        let stale = slack(SLACK_SECRET, Some(ts), Some(SLACK_SIG), SLACK_BODY.as_bytes(), 1_531_420_618 + 301).unwrap_err();
        assert!(stale.to_string().contains("5 minutes"));
        assert!(slack(SLACK_SECRET, Some(ts), None, SLACK_BODY.as_bytes(), now).is_err(), "missing");
    }

    /// Twilio's worked example (fixtures README, from Twilio's documentation).
    #[test]
    fn twilio_vector_passes_and_any_change_fails() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let body = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let sig = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        twilio("12345", url, Some(sig), body.as_bytes()).unwrap();
        assert!(twilio("12346", url, Some(sig), body.as_bytes()).is_err(), "token");
        assert!(twilio("12345", url, Some(sig), body.replace("1234&", "1235&").as_bytes()).is_err(), "body");
        assert!(twilio("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", Some(sig), body.as_bytes()).is_err(), "url");
    }

    #[test]
    fn whatsapp_signature_over_raw_bytes() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(body);
        let header = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        whatsapp("app-secret", Some(&header), body).unwrap();
        assert!(whatsapp("app-secreT", Some(&header), body).is_err());
        assert!(whatsapp("app-secret", Some(&header), br#"{"object":"whatsapp_business_account" }"#).is_err());
        assert!(whatsapp("app-secret", None, body).is_err());
    }
}
