//! `ledgerd projections`: the views' status and rebuilds (`ledger.v1.Admin`).

use clap::Subcommand;
use proto::v1 as pb;

use super::fail;

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
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            let r = admin.get_projection_status(pb::GetProjectionStatusRequest {}).await.map_err(fail)?.into_inner();
            for p in r.projections {
                println!("{}: checkpoint {}, {} position(s) and {:.3} s behind", p.name, p.checkpoint, p.lag_positions, p.lag_seconds);
            }
        }
        ProjectionsCommand::Rebuild { name, target } => {
            let mut admin = pb::admin_client::AdminClient::new(crate::cli::client::connect(&target).await?);
            eprintln!("rebuilding {name} from position 0...");
            let r = admin.rebuild_projection(pb::RebuildProjectionRequest { name: name.clone() }).await.map_err(fail)?.into_inner();
            println!("{name}: rebuilt from {} event(s)", r.events_applied);
        }
    }
    Ok(())
}
