//! `ledgerd erase` and `ledgerd keys`: gRPC clients of `ledger.v1.Privacy` and `ledger.v1.Admin`
//! for DPOs and operators. They print ids, states and certificates, never personal data.

use anyhow::Context;
use clap::{Args, Subcommand};
use proto::v1 as pb;

/// Options of `ledgerd erase`.
#[derive(Args, Debug, Clone)]
pub struct EraseArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The customer to erase (or, with --status, whose erasure to show).
    #[arg(long)]
    pub customer: Option<String>,
    /// Idempotency key of the request (or, with --status, the request to show).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Legal basis, e.g. gdpr-art17-1a.
    #[arg(long)]
    pub legal_basis: Option<String>,
    /// Who asks: a staff or system identifier.
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Show an erasure's status instead of erasing.
    #[arg(long, conflicts_with = "retry_dead_letters")]
    pub status: bool,
    /// Queue every dead-lettered downstream notification again.
    #[arg(long)]
    pub retry_dead_letters: bool,
}


fn fail(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map_or_else(|| "-".into(), |t| erasure::rfc3339_millis(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
}

fn print_status(s: &pb::ErasureStatus) {
    println!("request:        {}", s.request_id);
    println!("customer:       {}", s.customer_id);
    println!("legal basis:    {}", s.legal_basis);
    println!("requested by:   {}", s.requested_by);
    println!("requested at:   {}", when(&s.requested_at));
    println!("unreadable at:  {}", when(&s.unreadable_at));
    println!("purged at:      {}", when(&s.purged_at));
    println!("key:            sha256:{}", s.key_fingerprint);
    for d in &s.deliveries {
        let state = pb::DeliveryState::try_from(d.state).map_or("unknown", |s| s.as_str_name());
        println!(
            "downstream {}: {} after {} attempt(s){}{}",
            d.downstream,
            state.trim_start_matches("DELIVERY_STATE_").to_lowercase(),
            d.attempts,
            if d.last_error.is_empty() { String::new() } else { format!(", last error: {}", d.last_error) },
            d.delivered_at.as_ref().map_or_else(String::new, |_| format!(", acknowledged {}", when(&d.delivered_at))),
        );
    }
}

/// Runs `ledgerd erase`.
pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let mut privacy = pb::privacy_client::PrivacyClient::new(crate::client::connect(&args.target).await?);
    if args.retry_dead_letters {
        let r = privacy.retry_dead_letters(pb::RetryDeadLettersRequest {}).await.map_err(fail)?.into_inner();
        println!("queued {} dead-lettered notification(s) again", r.requeued);
        return Ok(());
    }
    if args.status {
        let req = pb::GetErasureStatusRequest {
            request_id: args.request_id.unwrap_or_default(),
            customer_id: args.customer.unwrap_or_default(),
        };
        let s = privacy.get_erasure_status(req).await.map_err(fail)?.into_inner().status.context("no status")?;
        print_status(&s);
        println!("\n{}", s.certificate);
        return Ok(());
    }
    let req = pb::EraseCustomerRequest {
        customer_id: args.customer.context("--customer is required")?,
        request_id: args.request_id.context("--request-id is required")?,
        legal_basis: args.legal_basis.context("--legal-basis is required")?,
        requested_by: args.requested_by.context("--requested-by is required")?,
    };
    let r = privacy.erase_customer(req).await.map_err(fail)?.into_inner();
    if let Some(s) = &r.status {
        print_status(s);
    }
    println!("\n{}", r.certificate);
    Ok(())
}

/// `ledgerd keys` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// Create a new KEK version for a region and rewrap every live data key under it.
    Rotate {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The region.
        #[arg(long)]
        region: String,
    },
    /// Destroy a KEK version; refused while it is current or still wraps a data key.
    Destroy {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The region.
        #[arg(long)]
        region: String,
        /// The version to destroy.
        #[arg(long)]
        version: u32,
    },
    /// List a region's KEK versions and how many data keys each wraps.
    List {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The region.
        #[arg(long)]
        region: String,
    },
}

/// Runs `ledgerd keys ...`.
pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Rotate { target, region } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            let r = admin.rotate_region_key(pb::RotateRegionKeyRequest { region: region.clone() }).await.map_err(fail)?.into_inner();
            println!("region {region}: KEK version {} is current; {} data key(s) rewrapped", r.version, r.rewrapped);
        }
        KeysCommand::Destroy { target, region, version } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            admin.destroy_region_key(pb::DestroyRegionKeyRequest { region: region.clone(), version }).await.map_err(fail)?;
            println!("region {region}: KEK version {version} destroyed");
        }
        KeysCommand::List { target, region } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            let r = admin.list_region_keys(pb::ListRegionKeysRequest { region: region.clone() }).await.map_err(fail)?.into_inner();
            for v in r.versions {
                println!("region {region} KEK v{}{}: {} data key(s)", v.version, if v.current { " (current)" } else { "" }, v.data_keys);
            }
        }
    }
    Ok(())
}

/// `ledgerd projections` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ProjectionsCommand {
    /// Each view's checkpoint and lag.
    Status {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
    },
    /// Drop a view's rows and build it again from position 0.
    Rebuild {
        /// The view's name: `audit`, `crm` or `routing`.
        name: String,
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
    },
}

/// Runs `ledgerd projections ...`.
pub async fn projections(cmd: ProjectionsCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectionsCommand::Status { target } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            let r = admin.get_projection_status(pb::GetProjectionStatusRequest {}).await.map_err(fail)?.into_inner();
            for p in r.projections {
                println!("{}: checkpoint {}, {} position(s) and {:.3} s behind", p.name, p.checkpoint, p.lag_positions, p.lag_seconds);
            }
        }
        ProjectionsCommand::Rebuild { name, target } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            eprintln!("rebuilding {name} from position 0...");
            let r = admin.rebuild_projection(pb::RebuildProjectionRequest { name: name.clone() }).await.map_err(fail)?.into_inner();
            println!("{name}: rebuilt from {} event(s)", r.events_applied);
        }
    }
    Ok(())
}

/// `ledgerd tokens` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum TokensCommand {
    /// Create a bearer token for a principal and print it (once; the server keeps its hash only).
    Create {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The principal's name, as access records will show it.
        #[arg(long)]
        principal: String,
        /// Comma-separated roles: appender, reader, auditor, dpo, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Comma-separated regions it is scoped to [default: every region].
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Lifetime in seconds [default: no expiry].
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u64,
        /// Write the token to this file (0600) instead of standard output, so it never shows in
        /// a terminal or a captured log.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Revoke a token by its public id (from `create` or `list`).
    Revoke {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The token's public id.
        id: String,
    },
    /// List every token's id, principal, roles, scopes and state (never the tokens).
    List {
        /// The server's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
    },
}

/// Runs `ledgerd tokens ...`.
pub async fn tokens(cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create { target, principal, roles, regions, ttl_seconds, out } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            let r = admin.create_token(pb::CreateTokenRequest { principal, roles, regions, ttl_seconds }).await.map_err(fail)?.into_inner();
            let id = r.info.map(|i| i.id).unwrap_or_default();
            // The token exists only here: the server keeps its hash. It goes where the operator
            // asked, once, and nowhere else.
            match out {
                Some(path) => {
                    crate::auth::write_private(&path, format!("{}\n", r.token).as_bytes())?;
                    eprintln!("token {id} created and written to {} (0600)", path.display());
                }
                None => {
                    eprintln!("token {id} created; it is shown once, here:");
                    println!("{}", r.token);
                }
            }
        }
        TokensCommand::Revoke { target, id } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            admin.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.map_err(fail)?;
            println!("token {id} revoked");
        }
        TokensCommand::List { target } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::client::connect(&target).await?);
            let r = admin.list_tokens(pb::ListTokensRequest {}).await.map_err(fail)?.into_inner();
            let now = ledger::types::UnixMillis::now().0;
            for t in r.tokens {
                let state = if t.revoked_unix_ms != 0 {
                    "revoked"
                } else if t.expires_unix_ms != 0 && t.expires_unix_ms <= now {
                    "expired"
                } else {
                    "active"
                };
                let regions = if t.regions.is_empty() { "every region".to_owned() } else { t.regions.join(",") };
                println!("{} {} roles={} regions={} {state}", t.id, t.principal, t.roles.join(","), regions);
            }
        }
    }
    Ok(())
}
