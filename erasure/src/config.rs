//! Downstream systems and outbox bounds, from the server's configuration file.

use serde::{Deserialize, Serialize};

pub use ledger::secret::Secret;

/// A system that must hear of every erasure.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Downstream {
    /// A short name: `[A-Za-z0-9._-]`, unique. Shown in status; the URL never is.
    pub name: String,
    /// Where notifications are POSTed.
    pub url: String,
    /// The Standard Webhooks signing secret (`whsec_<base64>`, or raw text).
    pub secret: Secret,
}

/// Downstream systems and the outbox's retry bounds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ErasureConfig {
    /// Systems notified of every erasure.
    pub downstream: Vec<Downstream>,
    /// Delivery attempts before a notification becomes a dead letter.
    pub attempts_max: u32,
    /// Delay before the first retry, in milliseconds; it doubles per attempt (with jitter).
    pub backoff_initial_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// Time limit of one delivery attempt, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            downstream: Vec::new(),
            attempts_max: 12,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 3_600_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl ErasureConfig {
    /// Checks names (unique, opaque) and URLs (http or https).
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for d in &self.downstream {
            let ok = !d.name.is_empty()
                && d.name.len() <= 64
                && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err("erasure.downstream.name must be 1 to 64 of [A-Za-z0-9._-]".into());
            }
            if !seen.insert(d.name.as_str()) {
                return Err(format!("erasure.downstream.name {} is used twice", d.name));
            }
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err(format!("erasure.downstream {}: url must start with http:// or https://", d.name));
            }
            if d.secret.expose().is_empty() {
                return Err(format!("erasure.downstream {}: secret must not be empty", d.name));
            }
        }
        if self.attempts_max == 0 {
            return Err("erasure.attempts_max must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let d = Downstream { name: "crm".into(), url: "http://x".into(), secret: Secret::new("whsec_canary") };
        assert!(!format!("{d:?}").contains("canary"));
    }
}
