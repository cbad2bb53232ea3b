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
        let ledger = LedgerConfig {
            data_dir,
            keyring_path: args.keyring.clone().or(file.keyring),
            signing_key_path: args.signing_key.clone().or(file.signing_key),
            regions,
            limits: file.limits,
            tuning: file.tuning,
            startup_check: args.startup_check.or(file.startup_check).unwrap_or(StartupCheck::Quick),
            origin: args.origin.clone().or(file.origin),
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
