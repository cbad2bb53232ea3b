//! `ledgerd serve` configuration: embedded defaults, overridden by a TOML file, then by `LEDGER_*`
//! environment variables, then by flags (clap reads the environment for each flag).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use ledger::types::Region;
use ledger::{EngineTuning, LedgerConfig, Limits, StartupCheck};
use serde::Deserialize;

/// Flags of `ledgerd serve`; each can also be set as the `LEDGER_*` variable named.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// A TOML configuration file (see `ledgerd.example.toml`).
    #[arg(long, env = "LEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for RocksDB and, by default, the dev keyring and signing key [default: ./data].
    #[arg(long, env = "LEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051]; port 0 picks a free port.
    #[arg(long, env = "LEDGER_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// HTTP listen address for health, readiness and metrics [default: 127.0.0.1:8080].
    #[arg(long, env = "LEDGER_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Comma-separated regions this node holds data for [default: eu,us].
    #[arg(long, env = "LEDGER_REGIONS", value_delimiter = ',')]
    pub regions: Option<Vec<String>>,
    /// Key-encryption keyring file [default: <data-dir>/keyring.json].
    #[arg(long, env = "LEDGER_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Ed25519 signing key file [default: <data-dir>/signing.key].
    #[arg(long, env = "LEDGER_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// What to verify on start: `quick` (constant time) or `full` (re-hash every event) [default: quick].
    #[arg(long, env = "LEDGER_STARTUP_CHECK", value_parser = parse_check)]
    pub startup_check: Option<StartupCheck>,
    /// Origin line of signed tree heads [default: ledgerd/<first 8 bytes of the public key in hex>].
    #[arg(long, env = "LEDGER_ORIGIN")]
    pub origin: Option<String>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "LEDGER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Serve plaintext gRPC and HTTP on an address beyond loopback. Refused without it: tokens
    /// and decrypted data would cross the network in the clear.
    #[arg(long, env = "LEDGER_ALLOW_PLAINTEXT_BEYOND_LOOPBACK")]
    pub allow_plaintext_beyond_loopback: bool,
    /// PEM certificate chain the gRPC and HTTP ports serve TLS with (with --tls-key).
    #[arg(long, env = "LEDGER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LEDGER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate authority whose client certificates authenticate gRPC callers (mutual TLS).
    #[arg(long, env = "LEDGER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM revocation lists of the client CA.
    #[arg(long, env = "LEDGER_TLS_CLIENT_CRL")]
    pub tls_client_crl: Option<PathBuf>,
    /// Refuse gRPC connections without a client certificate (bearer tokens then need one too).
    #[arg(long, env = "LEDGER_TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
    /// Test-only fault injection: the writer thread panics when it stages an append to this
    /// stream, to test that a dead writer makes the node unready. Hidden; never in production.
    #[arg(long, hide = true)]
    pub inject_writer_panic_on_stream: Option<String>,
}

/// Flags override the file's `[tls]` field by field; a key without a certificate (or the
/// reverse) is an error, not a silent plaintext start.
fn resolve_tls(args: &ServeArgs, file: Option<TlsConfig>) -> anyhow::Result<Option<TlsConfig>> {
    let cert = args.tls_cert.clone().or(file.as_ref().map(|t| t.cert.clone()));
    let key = args.tls_key.clone().or(file.as_ref().map(|t| t.key.clone()));
    let client_ca = args.tls_client_ca.clone().or(file.as_ref().and_then(|t| t.client_ca.clone()));
    let client_crl = args.tls_client_crl.clone().or(file.as_ref().and_then(|t| t.client_crl.clone()));
    let require_client_cert = args.tls_require_client_cert || file.as_ref().is_some_and(|t| t.require_client_cert);
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if (require_client_cert || client_crl.is_some()) && client_ca.is_none() {
                bail!("invalid tls: require_client_cert and client_crl need client_ca, the authority client certificates are checked against");
            }
            Ok(Some(TlsConfig { cert, key, client_ca, client_crl, require_client_cert }))
        }
        (None, None) if client_ca.is_none() && client_crl.is_none() && !require_client_cert => Ok(None),
        _ => bail!("invalid tls: cert and key must both be set (client_ca and require_client_cert need them too)"),
    }
}

fn parse_check(s: &str) -> Result<StartupCheck, String> {
    match s {
        "quick" => Ok(StartupCheck::Quick),
        "full" => Ok(StartupCheck::Full),
        _ => Err("expected quick or full".into()),
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    regions: Option<Vec<String>>,
    keyring: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    startup_check: Option<StartupCheck>,
    origin: Option<String>,
    log_format: Option<String>,
    limits: Limits,
    tuning: EngineTuning,
    erasure: erasure::ErasureConfig,
    connectors: connectors::ConnectorsConfig,
    crm: projections::crm_push::CrmConfig,
    routing: RoutingConfig,
    tls: Option<TlsConfig>,
    quotas: Quotas,
    timeouts: Timeouts,
}

/// The `[tls]` section: the certificate both ports serve, and the client CA of mutual TLS.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates whose client certificates authenticate gRPC callers; the subject's
    /// common name is the principal, its `OU` values its roles and `region:<r>` scopes.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists of the client CA: a revoked client certificate fails
    /// the handshake.
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
    /// Refuse gRPC connections that present no client certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// The `[quotas]` section: what one principal may use, so that no caller can starve the
/// others. Exceeding a quota is `RESOURCE_EXHAUSTED`. `[[quotas.principal]]` entries give named
/// principals other figures (a bulk importer more, an untrusted integration less).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Sustained calls per second, per principal.
    pub calls_per_second: f64,
    /// Calls a principal may make in a burst above the sustained rate.
    pub burst: f64,
    /// Calls (unary or streaming) a principal may have open at once.
    pub concurrent_calls: usize,
    /// Sustained appended events per second, per principal (an Append of 100 events counts 100).
    pub events_per_second: f64,
    /// Events a principal may append in a burst above the sustained rate.
    pub event_burst: f64,
    /// Named principals with their own figures.
    pub principal: Vec<PrincipalQuota>,
}

/// One principal's own quotas (`[[quotas.principal]]`); what it leaves out is the default's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalQuota {
    /// The principal's name (a token's principal or a certificate's common name).
    pub name: String,
    /// See [`Quotas::calls_per_second`].
    pub calls_per_second: Option<f64>,
    /// See [`Quotas::burst`].
    pub burst: Option<f64>,
    /// See [`Quotas::concurrent_calls`].
    pub concurrent_calls: Option<usize>,
    /// See [`Quotas::events_per_second`].
    pub events_per_second: Option<f64>,
    /// See [`Quotas::event_burst`].
    pub event_burst: Option<f64>,
}

/// The figures one principal is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLimits {
    /// Calls per second.
    pub calls_per_second: f64,
    /// Call burst.
    pub burst: f64,
    /// Open calls.
    pub concurrent_calls: usize,
    /// Events per second.
    pub events_per_second: f64,
    /// Event burst.
    pub event_burst: f64,
}

impl Quotas {
    /// The figures `principal` is held to.
    pub fn for_principal(&self, principal: &str) -> QuotaLimits {
        let own = self.principal.iter().find(|p| p.name == principal);
        QuotaLimits {
            calls_per_second: own.and_then(|p| p.calls_per_second).unwrap_or(self.calls_per_second),
            burst: own.and_then(|p| p.burst).unwrap_or(self.burst),
            concurrent_calls: own.and_then(|p| p.concurrent_calls).unwrap_or(self.concurrent_calls),
            events_per_second: own.and_then(|p| p.events_per_second).unwrap_or(self.events_per_second),
            event_burst: own.and_then(|p| p.event_burst).unwrap_or(self.event_burst),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let names = std::iter::once("the defaults").chain(self.principal.iter().map(|p| p.name.as_str()));
        for name in names {
            let l = self.for_principal(name);
            if !(l.calls_per_second > 0.0 && l.burst >= 1.0 && l.concurrent_calls >= 1 && l.events_per_second > 0.0 && l.event_burst >= 1.0) {
                bail!("invalid quotas ({name}): rates must be above 0, bursts and concurrent_calls at least 1");
            }
        }
        Ok(())
    }
}

impl Default for Quotas {
    fn default() -> Self {
        // Generous: they stop a runaway client without capping one busy service on a small
        // node (the write benchmarks run as one principal). Isolating principals from each
        // other takes figures that fit the node, per principal (`[[quotas.principal]]`).
        Quotas {
            calls_per_second: 50_000.0,
            burst: 100_000.0,
            concurrent_calls: 256,
            events_per_second: 500_000.0,
            event_burst: 1_000_000.0,
            principal: Vec::new(),
        }
    }
}

/// The `[timeouts]` section: how long a slow or silent client may hold server resources.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// A unary call (including reading its request) must finish within this, ms.
    pub request_ms: u64,
    /// A streaming response whose reader accepts nothing for this long is ended with
    /// `RESOURCE_EXHAUSTED`, ms.
    pub stream_stall_ms: u64,
    /// A TLS handshake must finish within this, ms.
    pub handshake_ms: u64,
    /// An HTTP/1 client must send its request headers within this, ms.
    pub http_header_ms: u64,
    /// Idle connections are pinged this often, and closed when a ping goes unanswered, ms.
    pub keepalive_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { request_ms: 60_000, stream_stall_ms: 30_000, handshake_ms: 10_000, http_header_ms: 10_000, keepalive_ms: 30_000 }
    }
}

/// The `[routing]` section: the router's rules and timers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Whether the router runs (triage, acknowledgements, escalations, abandonment).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A rules file replacing the embedded `config/routing.toml`.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// How often the SLA and abandonment timers are checked, ms.
    #[serde(default = "default_sweep_ms")]
    pub sweep_interval_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_sweep_ms() -> u64 {
    5_000
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { enabled: true, rules: None, sweep_interval_ms: default_sweep_ms() }
    }
}

/// The resolved configuration of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The engine's configuration.
    pub ledger: LedgerConfig,
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP listen address.
    pub http_addr: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Downstream systems notified of erasures, and the outbox's retry bounds.
    pub erasure: erasure::ErasureConfig,
    /// Channel accounts and webhook bounds.
    pub connectors: connectors::ConnectorsConfig,
    /// The CRM endpoint activities are pushed to, and the CRM webhook's secret.
    pub crm: projections::crm_push::CrmConfig,
    /// The router's settings.
    pub routing: RoutingConfig,
    /// The routing rules (from `routing.rules`, or the embedded defaults).
    pub rules: projections::rules::Rules,
    /// Whether plaintext listeners beyond loopback are allowed (flag or environment only).
    pub allow_plaintext_beyond_loopback: bool,
    /// TLS for both ports, if configured.
    pub tls: Option<TlsConfig>,
    /// Per-principal quotas.
    pub quotas: Quotas,
    /// Slow-client timeouts.
    pub timeouts: Timeouts,
}

impl ServeConfig {
    /// Resolves defaults, file, environment and flags, in rising precedence.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("parsing config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
        let region_names = args.regions.clone().or(file.regions).unwrap_or_else(|| vec!["eu".into(), "us".into()]);
        let mut regions = Vec::new();
        for name in region_names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let region = Region::parse(name, "regions").map_err(|e| anyhow::anyhow!("{e}"))?;
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        if regions.is_empty() {
            bail!("invalid regions: at least one region must be served");
        }
        let log_format = args.log_format.clone().or(file.log_format).unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("invalid log_format: expected text or json");
        }
        file.limits.validate().map_err(|e| anyhow::anyhow!(e))?;
        let ledger = LedgerConfig {
            data_dir,
            keyring_path: args.keyring.clone().or(file.keyring),
            signing_key_path: args.signing_key.clone().or(file.signing_key),
            regions,
            limits: file.limits,
            tuning: file.tuning,
            startup_check: args.startup_check.or(file.startup_check).unwrap_or(StartupCheck::Quick),
            origin: args.origin.clone().or(file.origin),
            hooks: Default::default(),
            writer_panic_on_stream: args.inject_writer_panic_on_stream.clone(),
        };
        if let Some(origin) = &ledger.origin {
            if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
                bail!("invalid origin: must be non-empty, without spaces or '+'");
            }
        }
        Ok(ServeConfig {
            ledger,
            grpc_addr: args.grpc_addr.clone().or(file.grpc_addr).unwrap_or_else(|| "127.0.0.1:50051".into()),
            http_addr: args.http_addr.clone().or(file.http_addr).unwrap_or_else(|| "127.0.0.1:8080".into()),
            log_format,
            allow_plaintext_beyond_loopback: args.allow_plaintext_beyond_loopback,
            tls: resolve_tls(args, file.tls)?,
            quotas: {
                file.quotas.validate()?;
                file.quotas
            },
            timeouts: {
                let t = file.timeouts;
                if [t.request_ms, t.stream_stall_ms, t.handshake_ms, t.http_header_ms, t.keepalive_ms].contains(&0) {
                    bail!("invalid timeouts: every timeout must be at least 1 ms");
                }
                t
            },
            erasure: {
                file.erasure.validate().map_err(|e| anyhow::anyhow!("invalid {e}"))?;
                file.erasure
            },
            connectors: file.connectors,
            crm: {
                file.crm.validate().map_err(|e| anyhow::anyhow!("invalid {e}"))?;
                file.crm
            },
            rules: match &file.routing.rules {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading routing rules {}", path.display()))?;
                    projections::rules::Rules::parse(&text).map_err(|e| anyhow::anyhow!("invalid {e} ({})", path.display()))?
                }
                None => projections::rules::Rules::default_rules(),
            },
            routing: {
                if file.routing.sweep_interval_ms == 0 {
                    bail!("invalid routing.sweep_interval_ms: must be at least 1");
                }
                file.routing
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledgerd.toml");
        std::fs::write(&path, "grpc_addr = \"127.0.0.1:6000\"\nregions = [\"br\"]\n[limits]\npayload_bytes_max = 10\n").unwrap();
        let args = ServeArgs { config: Some(path.clone()), ..Default::default() };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.grpc_addr, "127.0.0.1:6000");
        assert_eq!(c.http_addr, "127.0.0.1:8080");
        assert_eq!(c.ledger.regions[0].as_str(), "br");
        assert_eq!(c.ledger.limits.payload_bytes_max, 10);
        let args = ServeArgs { config: Some(path), grpc_addr: Some("127.0.0.1:7000".into()), ..Default::default() };
        assert_eq!(ServeConfig::resolve(&args).unwrap().grpc_addr, "127.0.0.1:7000");
        let bad = ServeArgs { regions: Some(vec!["EU!".into()]), ..Default::default() };
        assert!(ServeConfig::resolve(&bad).unwrap_err().to_string().contains("regions"));
    }

    /// The example file documents every setting with its default; it must parse and agree.
    #[test]
    fn example_config_matches_the_defaults() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ledgerd.example.toml");
        let from_file = ServeConfig::resolve(&ServeArgs { config: Some(path), ..Default::default() }).unwrap();
        let defaults = ServeConfig::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }
}
