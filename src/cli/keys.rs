//! `ledgerd keys`: rotate, destroy and list a region's key-encryption keys (`ledger.v1.Admin`).

use clap::Subcommand;
use proto::v1 as pb;

use super::fail;

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
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            let r = admin.rotate_region_key(pb::RotateRegionKeyRequest { region: region.clone() }).await.map_err(fail)?.into_inner();
            println!("region {region}: KEK version {} is current; {} data key(s) rewrapped", r.version, r.rewrapped);
        }
        KeysCommand::Destroy { target, region, version } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            admin.destroy_region_key(pb::DestroyRegionKeyRequest { region: region.clone(), version }).await.map_err(fail)?;
            println!("region {region}: KEK version {version} destroyed");
        }
        KeysCommand::List { target, region } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            let r = admin.list_region_keys(pb::ListRegionKeysRequest { region: region.clone() }).await.map_err(fail)?.into_inner();
            for v in r.versions {
                println!("region {region} KEK v{}{}: {} data key(s)", v.version, if v.current { " (current)" } else { "" }, v.data_keys);
            }
        }
    }
    Ok(())
}
