//! `ledgerd`: the ledger server and its command-line tools.
//!
//! Rooms: `serve` (the wiring, as steps, and its configuration), `api` (one file per gRPC
//! service), `security` (methods, tokens, the auth layer, TLS, quotas), `http` (health, metrics,
//! webhooks) and `cli` (one file per command group). The proof-file format and its offline
//! verifier are the `proof` crate.

mod api;
mod cli;
mod http;
mod security;
mod serve;

use clap::{Parser, Subcommand};

use cli::{bench, erase, keys, proof_file, projections, sim, tokens, verify};

/// Decoding and encoding streams of events allocates many small strings and buffers; glibc's
/// malloc spent much of the read path in `malloc_consolidate` (see ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Compliance-first, append-only, event-sourced message ledger.
#[derive(Parser, Debug)]
#[command(name = "ledgerd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the ledger server (gRPC and HTTP) with embedded defaults.
    Serve(serve::config::ServeArgs),
    /// Drive a running server over gRPC and print throughput and latency.
    Bench(bench::BenchArgs),
    /// Auditor tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Verify a running ledger against the auditor's last trusted tree head, or a proof file
    /// (replay or export) offline; exit 0 only if it holds.
    Verify(verify::VerifyArgs),
    /// Erase a customer (crypto-shredding), show an erasure's status, or retry dead letters.
    Erase(erase::EraseArgs),
    /// Export a customer (GDPR Art. 15/20) or a whole region to a verifiable proof file.
    Export(proof_file::ExportArgs),
    /// Rotate, destroy and list a region's key-encryption keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Status and rebuilds of the views built from the log.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Create, revoke and list bearer tokens.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Run the engine's deterministic simulation with storage faults for one seed (or several);
    /// a failure prints the command that replays it.
    Sim(sim::SimArgs),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Print the C2SP verifier key that checks this ledger's signed tree heads. Reads only the
    /// signing key file, so it works while the server runs.
    PublicKey {
        /// The server's data directory (for the default signing key path).
        #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
        /// The signing key file [default: <data-dir>/signing.key].
        #[arg(long, env = "LEDGER_SIGNING_KEY")]
        signing_key: Option<std::path::PathBuf>,
        /// The origin the server uses, if configured.
        #[arg(long, env = "LEDGER_ORIGIN")]
        origin: Option<String>,
    },
    /// Replay a customer's (or one stream's) history with inclusion proofs into a proof file that
    /// `ledgerd verify --file` checks offline. The read is recorded in the ledger's access trail.
    Replay(proof_file::ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = serve::config::ServeConfig::resolve(&args)?;
            init_tracing(&config.log_format);
            runtime.block_on(serve::serve(config))
        }
        Command::Bench(args) => {
            init_tracing("text");
            runtime.block_on(bench::run(args))
        }
        Command::Verify(args) => {
            let verified = runtime.block_on(verify::run(args))?;
            std::process::exit(if verified { 0 } else { 1 });
        }
        Command::Audit(AuditCommand::Replay(args)) => runtime.block_on(proof_file::replay(args)),
        Command::Erase(args) => runtime.block_on(erase::erase(args)),
        Command::Export(args) => runtime.block_on(proof_file::export(args)),
        Command::Keys(cmd) => runtime.block_on(keys::keys(cmd)),
        Command::Projections(cmd) => runtime.block_on(projections::projections(cmd)),
        Command::Tokens(cmd) => runtime.block_on(tokens::tokens(cmd)),
        Command::Sim(args) => std::process::exit(if sim::run(args) { 0 } else { 1 }),
        Command::Audit(AuditCommand::PublicKey { data_dir, signing_key, origin }) => {
            let path = signing_key.unwrap_or_else(|| data_dir.join("signing.key"));
            let key = ledger::keys::SigningKey::open(&path)
                .map_err(|e| anyhow::anyhow!("{e}; start `ledgerd serve` once to create the signing key"))?;
            let public = key.verifying_key();
            let origin = ledger::default_origin(origin.as_deref(), &public);
            println!("{}", ledger::checkpoint::verifier_key(&origin, public.as_bytes()));
            Ok(())
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGER_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
