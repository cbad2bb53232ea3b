//! Bot Framework authentication for Teams activities: the `Authorization: Bearer` JWT must be
//! RS256-signed by a key of the configured JWKS (matched by `kid`), with the configured issuer and
//! audience (the bot's app id), and within its validity (expiry and not-before, 5 minutes' skew).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::ConnectorError;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 300;

/// Verifies Bot Framework tokens against one JWKS.
pub struct TeamsVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TeamsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamsVerifier").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

impl TeamsVerifier {
    /// Loads the RSA keys of a JWKS document.
    pub fn from_jwks(jwks: &[u8], issuer: &str, audience: &str) -> Result<Self, String> {
        let doc: serde_json::Value = serde_json::from_slice(jwks).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let mut keys = HashMap::new();
        for k in doc.get("keys").and_then(|k| k.as_array()).ok_or("the JWKS has no keys array")? {
            let (Some(kid), Some(n), Some(e)) = (k.get("kid").and_then(|v| v.as_str()), k.get("n").and_then(|v| v.as_str()), k.get("e").and_then(|v| v.as_str())) else {
                continue;
            };
            if k.get("kty").and_then(|v| v.as_str()) == Some("RSA") {
                keys.insert(kid.to_owned(), DecodingKey::from_rsa_components(n, e).map_err(|e| format!("JWKS key {kid}: {e}"))?);
            }
        }
        if keys.is_empty() {
            return Err("the JWKS has no RSA keys".into());
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(TeamsVerifier { keys, validation })
    }

    /// Checks an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<(), ConnectorError> {
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or(ConnectorError::Unauthorized("header Authorization: Bearer is missing"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| ConnectorError::Unauthorized("is not a JWT"))?;
        let key = header.kid.as_deref().and_then(|kid| self.keys.get(kid)).ok_or(ConnectorError::Unauthorized("key id is not in the JWKS"))?;
        jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation).map(|_| ()).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ConnectorError::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token is not valid yet",
                ErrorKind::InvalidIssuer => "token has the wrong issuer",
                ErrorKind::InvalidAudience => "token has the wrong audience",
                ErrorKind::InvalidSignature => "token signature does not verify",
                _ => "token is invalid",
            })
        })
    }
}
