//! The CLI's connection to a server: a channel that sends the bearer token on every call.
//!
//! The token comes from `LEDGER_TOKEN`, else the file named by `LEDGER_TOKEN_FILE`, else the
//! admin token a server writes on its first start (`$LEDGER_DATA_DIR/admin.token`, by default
//! `./data/admin.token`), so on the server's own machine the CLI works with no setup.
//!
//! An `https://` target is reached over TLS: `LEDGER_TLS_CA` names the PEM authority the
//! server's certificate is checked against, and `LEDGER_TLS_CLIENT_CERT` with
//! `LEDGER_TLS_CLIENT_KEY` a client certificate for mutual TLS (which then names the caller,
//! unless a token is given explicitly).

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
    /// The token in `LEDGER_TOKEN` or `LEDGER_TOKEN_FILE`; and, if `default_file`, the admin
    /// token file when neither is set.
    fn from_env(default_file: bool) -> anyhow::Result<Self> {
        if !default_file && std::env::var_os("LEDGER_TOKEN").is_none() && std::env::var_os("LEDGER_TOKEN_FILE").is_none() {
            return Ok(Bearer(None));
        }
        let token = match std::env::var("LEDGER_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                let path = match std::env::var_os("LEDGER_TOKEN_FILE") {
                    Some(p) => std::path::PathBuf::from(p),
                    None => {
                        let dir = std::env::var_os("LEDGER_DATA_DIR").map_or_else(|| std::path::PathBuf::from("./data"), std::path::PathBuf::from);
                        crate::security::admin_token_path(&dir)
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

/// Connects to `target` with the token from the environment (over TLS for `https://`).
pub async fn connect(target: &str) -> anyhow::Result<Conn> {
    connect_as(target, None).await
}

/// HTTP/2 receive window per stream.
const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// HTTP/2 receive window per connection (shared by its streams).
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Connects to `target` sending `token`, or (for `None`) the token from the environment.
pub async fn connect_as(target: &str, token: Option<&str>) -> anyhow::Result<Conn> {
    let mut endpoint = Channel::from_shared(target.to_owned())?;
    let mut client_cert = false;
    if target.starts_with("https://") {
        let (tls, with_cert) = client_tls()?;
        endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        client_cert = with_cert;
    }
    // HTTP/2's default 64 KiB windows make a reader of a large stream (replay, export, ReadAll)
    // wait for a window update every 64 KiB; these hold a few read messages in flight.
    let endpoint = endpoint.initial_stream_window_size(Some(STREAM_WINDOW_BYTES)).initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES));
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {target}"))?;
    // With a client certificate the certificate names the caller: the admin token file is not
    // picked up behind the user's back.
    let bearer = match token {
        Some(t) => Bearer::new(Some(t))?,
        None => Bearer::from_env(!client_cert)?,
    };
    Ok(InterceptedService::new(channel, bearer))
}

/// The TLS of an `https://` target, and whether it presents a client certificate.
fn client_tls() -> anyhow::Result<(tonic::transport::ClientTlsConfig, bool)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |var: &str| -> anyhow::Result<Option<Vec<u8>>> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(path) => std::fs::read(&path).map(Some).with_context(|| format!("reading {var} {}", path.to_string_lossy())),
        }
    };
    let ca = read("LEDGER_TLS_CA")?.context("an https:// target needs LEDGER_TLS_CA, the PEM authority of the server's certificate")?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let with_cert = match (read("LEDGER_TLS_CLIENT_CERT")?, read("LEDGER_TLS_CLIENT_KEY")?) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(cert, key));
            true
        }
        (None, None) => false,
        _ => anyhow::bail!("LEDGER_TLS_CLIENT_CERT and LEDGER_TLS_CLIENT_KEY go together"),
    };
    Ok((tls, with_cert))
}
