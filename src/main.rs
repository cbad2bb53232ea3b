//! `ledgerd`: the ledger server and its command-line tools.

mod audit;
mod auth;
mod bench;
mod client;
mod config;
mod dpo;
mod grpc;
mod http;
mod messaging;
mod privacy;
mod proof_file;
mod quota;
mod sim;
mod streams;
mod tls;
mod verify;
mod views;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledger::Ledger;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

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
    Serve(config::ServeArgs),
    /// Drive a running server over gRPC and print throughput and latency.
    Bench(bench::BenchArgs),
    /// Auditor tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Verify a running ledger against the auditor's last trusted tree head, or a proof file
    /// (replay or export) offline; exit 0 only if it holds.
    Verify(verify::VerifyArgs),
    /// Erase a customer (crypto-shredding), show an erasure's status, or retry dead letters.
    Erase(dpo::EraseArgs),
    /// Export a customer (GDPR Art. 15/20) or a whole region to a verifiable proof file.
    Export(proof_file::ExportArgs),
    /// Rotate, destroy and list a region's key-encryption keys.
    #[command(subcommand)]
    Keys(dpo::KeysCommand),
    /// Status and rebuilds of the views built from the log.
    #[command(subcommand)]
    Projections(dpo::ProjectionsCommand),
    /// Create, revoke and list bearer tokens.
    #[command(subcommand)]
    Tokens(dpo::TokensCommand),
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
            let config = config::ServeConfig::resolve(&args)?;
            init_tracing(&config.log_format);
            runtime.block_on(serve(config))
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
        Command::Erase(args) => runtime.block_on(dpo::erase(args)),
        Command::Export(args) => runtime.block_on(proof_file::export(args)),
        Command::Keys(cmd) => runtime.block_on(dpo::keys(cmd)),
        Command::Projections(cmd) => runtime.block_on(dpo::projections(cmd)),
        Command::Tokens(cmd) => runtime.block_on(dpo::tokens(cmd)),
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

/// Turns every service `NOT_SERVING` once the store is poisoned (a failed write or sync, or a
/// writer thread that died): the same node state `/readyz` reports as 503. Writes are refused
/// until a restart, which runs the recovery rule.
async fn not_serving_when_poisoned(ledger: Ledger, health: tonic_health::server::HealthReporter) {
    let mut poisoned = ledger.poisoned_watch();
    if poisoned.wait_for(|p| *p).await.is_err() {
        return;
    }
    tracing::error!("store poisoned: health is NOT_SERVING and writes are refused until restart; reads still work");
    health.set_not_serving::<proto::v1::ledger_server::LedgerServer<grpc::LedgerService>>().await;
    health.set_not_serving::<proto::v1::audit_server::AuditServer<audit::AuditService>>().await;
    health.set_not_serving::<proto::v1::privacy_server::PrivacyServer<privacy::PrivacyService>>().await;
    health.set_not_serving::<proto::v1::admin_server::AdminServer<privacy::AdminService>>().await;
    health.set_not_serving::<proto::v1::messaging_server::MessagingServer<messaging::MessagingService>>().await;
    health.set_not_serving::<proto::v1::views_server::ViewsServer<views::ViewsService>>().await;
    // The empty service name is the whole server's status.
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

/// How long a shutdown waits for in-flight requests and open connections to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Refuse before creating: every check that needs no data directory runs first (TLS files,
    // the Teams JWKS, the listeners and the plaintext rule), so a configuration that cannot
    // serve leaves no keyring, signing key, admin token or store behind.
    let grpc_tls = config.tls.as_ref().map(tls::grpc).transpose()?;
    let http_tls = config.tls.as_ref().map(tls::http).transpose()?;
    connectors::http::Webhooks::check_config(&config.connectors).map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
    let http_listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http_addr))?;
    let grpc_addr: SocketAddr = grpc_listener.local_addr()?;
    let http_addr: SocketAddr = http_listener.local_addr()?;
    let tls = config.tls.as_ref();
    for (name, addr) in [("grpc", grpc_addr), ("http", http_addr)] {
        if addr.ip().is_loopback() || tls.is_some() {
            continue;
        }
        anyhow::ensure!(
            config.allow_plaintext_beyond_loopback,
            "refusing to serve plaintext {name} on {addr}, beyond loopback: bearer tokens and decrypted customer data would cross \
             the network in the clear. Configure TLS (--tls-cert and --tls-key, or [tls]), bind to 127.0.0.1, or pass \
             --allow-plaintext-beyond-loopback (LEDGER_ALLOW_PLAINTEXT_BEYOND_LOOPBACK=true) behind a TLS-terminating proxy you trust"
        );
        tracing::warn!(
            listener = name,
            addr = %addr,
            "PLAINTEXT BEYOND LOOPBACK (allowed by --allow-plaintext-beyond-loopback): tokens and decrypted customer data \
             cross the network unencrypted unless a TLS-terminating proxy sits in front"
        );
    }
    let ledger_config = config.ledger.clone();
    let (ledger, report) = tokio::task::spawn_blocking(move || Ledger::open(ledger_config))
        .await?
        .map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    if report.keyring_written {
        tracing::warn!(
            path = %config.ledger.keyring_path().display(),
            "DEV KEYRING WRITTEN: region key-encryption keys are in a plain 0600 file; keep it away from \
             the data directory and its backups, or use an HSM, before holding real customer data"
        );
    }
    if report.signing_key_created {
        tracing::warn!(path = %config.ledger.signing_key_path().display(), "created a new ed25519 signing key (0600)");
    }
    tracing::info!(tree_size = report.tree_size, events_checked = report.events_checked, check = ?config.ledger.startup_check, "store verified");

    // The token store's file writes are synced: on a blocking thread.
    let data_dir = config.ledger.data_dir.clone();
    let (tokens, bootstrapped) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let tokens = std::sync::Arc::new(auth::TokenStore::open(&data_dir.join("auth").join("tokens.json"))?);
        let bootstrapped = auth::bootstrap(&tokens, &data_dir)?;
        Ok((tokens, bootstrapped))
    })
    .await??;
    if let Some(path) = bootstrapped {
        tracing::warn!(path = %path.display(), "first start: created an admin token (0600); the CLI reads it from there, other clients send it as `authorization: Bearer <token>`");
    }

    let timeouts = config.timeouts;
    let ms = std::time::Duration::from_millis;
    streams::set_stall_timeout(ms(timeouts.stream_stall_ms));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let service = grpc::LedgerService::new(ledger.clone(), shutdown_rx.clone());
    let max_request = config.ledger.limits.request_bytes_max;
    let ledger_server = proto::v1::ledger_server::LedgerServer::new(service)
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(64 * 1024 * 1024);
    let views = projections::Runner::open(ledger.clone(), &projections::FOLLOWERS).map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    let all_views: Vec<std::sync::Arc<dyn projections::View>> = projections::VIEWS.iter().filter_map(|n| projections::view_named(n)).collect();
    tokio::spawn(views.clone().follow(all_views, shutdown_rx.clone()));
    let audit_server = proto::v1::audit_server::AuditServer::new(audit::AuditService::new(ledger.clone(), views.clone()))
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(64 * 1024 * 1024);
    let eraser = erasure::Eraser::open(ledger.clone(), config.erasure.clone()).map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    eraser.start(shutdown_rx.clone());
    let privacy_server = proto::v1::privacy_server::PrivacyServer::new(privacy::PrivacyService::new(ledger.clone(), eraser))
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(64 * 1024 * 1024);
    let admin_server = proto::v1::admin_server::AdminServer::new(privacy::AdminService::new(ledger.clone(), views.clone(), tokens.clone()))
        .max_decoding_message_size(max_request);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<proto::v1::ledger_server::LedgerServer<grpc::LedgerService>>().await;
    health_reporter.set_serving::<proto::v1::audit_server::AuditServer<audit::AuditService>>().await;
    health_reporter.set_serving::<proto::v1::privacy_server::PrivacyServer<privacy::PrivacyService>>().await;
    health_reporter.set_serving::<proto::v1::admin_server::AdminServer<privacy::AdminService>>().await;
    health_reporter.set_serving::<proto::v1::messaging_server::MessagingServer<messaging::MessagingService>>().await;
    health_reporter.set_serving::<proto::v1::views_server::ViewsServer<views::ViewsService>>().await;
    tokio::spawn(not_serving_when_poisoned(ledger.clone(), health_reporter.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let ingestor = std::sync::Arc::new(
        connectors::Ingestor::open(ledger.clone(), config.connectors.conversation_gap_secs).map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?,
    );
    let webhooks = connectors::http::Webhooks::new(ingestor.clone(), config.connectors.clone()).map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    let outbound = connectors::outbound::Outbound::new(ingestor, config.connectors.clone());
    outbound.start(shutdown_rx.clone());
    if config.routing.enabled {
        let router = projections::router::Router::new(ledger.clone(), Some(outbound.clone()), config.rules.clone());
        let every = std::time::Duration::from_millis(config.routing.sweep_interval_ms);
        tokio::spawn(router.run(views.clone(), every, shutdown_rx.clone()));
    }
    let crm = (!config.crm.endpoint.is_empty()).then(|| projections::crm_push::CrmPush::new(ledger.clone(), views.clone(), config.crm.clone()));
    if let Some(crm) = &crm {
        tokio::spawn(crm.clone().run(shutdown_rx.clone()));
    }
    let views_server = proto::v1::views_server::ViewsServer::new(views::ViewsService::new(ledger.clone(), views.clone(), crm, config.rules.clone()))
        .max_decoding_message_size(max_request);
    let messaging_server = proto::v1::messaging_server::MessagingServer::new(messaging::MessagingService::new(ledger.clone(), outbound))
        .max_decoding_message_size(max_request);
    let mut grpc_stop = shutdown_rx.clone();
    let grpc_router = tonic::transport::Server::builder()
        // A unary call (reading its request included) that outlives this is cut off; streams
        // are bounded by the stall timeout instead.
        .timeout(ms(timeouts.request_ms))
        .http2_keepalive_interval(Some(ms(timeouts.keepalive_ms)))
        .http2_keepalive_timeout(Some(ms(timeouts.keepalive_ms)))
        .tcp_keepalive(Some(ms(timeouts.keepalive_ms)))
        .layer(auth::AuthLayer::new(tokens.clone(), ledger.clone(), config.quotas))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ledger_server)
        .add_service(audit_server)
        .add_service(privacy_server)
        .add_service(admin_server)
        .add_service(messaging_server)
        .add_service(views_server);
    let grpc_stopped = async move {
        let _ = grpc_stop.wait_for(|s| *s).await;
    };
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let grpc_server: Serving = match grpc_tls {
        // Nagle's algorithm with delayed ACKs adds 40 ms stalls to small unary calls.
        None => Box::pin(grpc_router.serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener).with_nodelay(Some(true)), grpc_stopped)),
        Some(acceptor) => {
            let incoming = tls::incoming(grpc_listener, acceptor, ms(timeouts.handshake_ms), ledger.clone());
            Box::pin(grpc_router.serve_with_incoming_shutdown(incoming, grpc_stopped))
        }
    };
    let http_stop = shutdown_rx.clone();
    let http_app = http::router(ledger.clone(), prometheus, tokens.clone(), webhooks, config.crm.clone());
    let http_server = http::serve(http_listener, http_app, http_tls, timeouts, http_stop);
    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(http_server);

    let regions: Vec<&str> = config.ledger.regions.iter().map(|r| r.as_str()).collect();
    tracing::info!(verifier_key = %ledger.verifier_key(), "signed tree heads are checkable with this verifier key");
    tracing::info!(
        grpc_addr = %grpc_addr,
        http_addr = %http_addr,
        regions = %regions.join(","),
        tls = %match tls {
            None => "off",
            Some(t) if t.require_client_cert => "on, client certificate required",
            Some(t) if t.client_ca.is_some() => "on, client certificates or tokens",
            Some(_) => "on, tokens",
        },
        data_dir = %config.ledger.data_dir.display(),
        "ledger ready"
    );

    shutdown_signal().await;
    health_reporter.set_not_serving::<proto::v1::ledger_server::LedgerServer<grpc::LedgerService>>().await;
    // Stop accepting; in-flight appends run to completion before the servers return. A client
    // that never closes its connection cannot hold the process: after the grace period the
    // servers are dropped, and the writer still commits everything already queued.
    let _ = shutdown_tx.send(true);
    let (grpc_abort, http_abort) = (grpc_task.abort_handle(), http_task.abort_handle());
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    match drained {
        Ok((grpc, http)) => {
            grpc?.context("gRPC server")?;
            http.context("HTTP server")?;
        }
        Err(_) => {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them");
            grpc_abort.abort();
            http_abort.abort();
        }
    }
    ledger.shutdown().await;
    tracing::info!(tree_size = ledger.committed_size(), "ledger stopped");
    Ok(())
}
