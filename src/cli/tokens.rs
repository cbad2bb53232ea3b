//! `ledgerd tokens`: create, revoke and list bearer tokens (`ledger.v1.Admin`). A new token is
//! printed once, or written to a 0600 file.

use clap::Subcommand;
use proto::v1 as pb;

use super::fail;

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
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            let r = admin.create_token(pb::CreateTokenRequest { principal, roles, regions, ttl_seconds }).await.map_err(fail)?.into_inner();
            let id = r.info.map(|i| i.id).unwrap_or_default();
            // The token exists only here: the server keeps its hash. It goes where the operator
            // asked, once, and nowhere else.
            match out {
                Some(path) => {
                    ledger::files::write_private(&path, format!("{}\n", r.token).as_bytes())?;
                    eprintln!("token {id} created and written to {} (0600)", path.display());
                }
                None => {
                    eprintln!("token {id} created; it is shown once, here:");
                    println!("{}", r.token);
                }
            }
        }
        TokensCommand::Revoke { target, id } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            admin.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.map_err(fail)?;
            println!("token {id} revoked");
        }
        TokensCommand::List { target } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
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
