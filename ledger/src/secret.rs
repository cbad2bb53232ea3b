//! A secret from configuration (a webhook signing secret, an auth token): never shown by `Debug`,
//! zeroized on drop, exposed only where it is used.

use serde::{Deserialize, Serialize};

/// A configured secret.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }
    /// The secret's text, for signing or verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(format!("{:?}", super::Secret::new("whsec_canary")), "Secret(<redacted>)");
    }
}
