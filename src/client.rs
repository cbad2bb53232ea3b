//! The CLI's connection to a server: a channel that sends the bearer token on every call.
//!
//! The token comes from `LEDGER_TOKEN`, else the file named by `LEDGER_TOKEN_FILE`, else the
//! admin token a server writes on its first start (`$LEDGER_DATA_DIR/admin.token`, by default
//! `./data/admin.token`), so on the server's own machine the CLI works with no setup.

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel that authenticates its calls.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every request. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<redacted>)" } else { "Bearer(none)" })
    }
}

impl Bearer {
    /// The token found in the environment or the default admin token file, if any.
    pub fn from_env() -> anyhow::Result<Self> {
        let token = match std::env::var("LEDGER_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                let path = match std::env::var_os("LEDGER_TOKEN_FILE") {
                    Some(p) => std::path::PathBuf::from(p),
                    None => {
                        let dir = std::env::var_os("LEDGER_DATA_DIR").map_or_else(|| std::path::PathBuf::from("./data"), std::path::PathBuf::from);
                        crate::auth::admin_token_path(&dir)
                    }
                };
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("LEDGER_TOKEN_FILE").is_none() => None,
                    Err(e) => return Err(anyhow::anyhow!("reading the token file {}: {e}", path.display())),
                }
            }
        };
        Self::new(token.as_deref())
    }

    /// A bearer of `token` (or none).
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = token.map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>().context("the token is not valid header text")).transpose()?;
        Ok(Bearer(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// Connects to `target` with the token from the environment.
pub async fn connect(target: &str) -> anyhow::Result<Conn> {
    let channel = Channel::from_shared(target.to_owned())?.connect().await.with_context(|| format!("connecting to {target}"))?;
    Ok(InterceptedService::new(channel, Bearer::from_env()?))
}
