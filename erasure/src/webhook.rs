//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, the MAC is HMAC-SHA256 under the secret, and the
//! header is `v1,<base64 MAC>`. A secret written `whsec_<base64>` is the base64-decoded bytes, as
//! in the reference libraries; any other secret is used as its raw bytes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The key bytes of a configured secret.
pub fn secret_key(secret: &str) -> Zeroizing<Vec<u8>> {
    match secret.strip_prefix("whsec_").and_then(|b| B64.decode(b).ok()) {
        Some(bytes) => Zeroizing::new(bytes),
        None => Zeroizing::new(secret.as_bytes().to_vec()),
    }
}

/// The MAC over `{id}.{timestamp}.{body}`, ready to finalize or verify.
fn mac(key: &[u8], id: &str, timestamp_secs: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value for one delivery attempt.
pub fn sign(secret: &str, id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    format!("v1,{}", B64.encode(mac(&secret_key(secret), id, timestamp_secs, body).finalize().into_bytes()))
}

/// Checks a received `webhook-signature` header (one or more space-separated `v1,<base64>`
/// signatures) in constant time. The caller checks the timestamp's freshness.
pub fn verify(secret: &str, id: &str, timestamp_secs: i64, body: &[u8], header: &str) -> bool {
    let key = secret_key(secret);
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| B64.decode(b).ok())
        .any(|sig| mac(&key, id, timestamp_secs, body).verify_slice(&sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The vector of the Standard Webhooks / Svix reference libraries' tests (for example
        // svix-webhooks `php/tests/WebhookTest.php`, `testSignFunctionWorks`).
        assert_eq!(
            sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let base = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 10, b"{}");
        assert_ne!(base, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx", "msg_1", 10, b"{}"));
        assert_ne!(base, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_2", 10, b"{}"));
        assert_ne!(base, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 11, b"{}"));
        assert_ne!(base, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 10, b"{ }"));
    }
}
