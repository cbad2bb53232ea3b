//! `ledgerd serve`: the wiring, as a list of steps. Everything that can refuse without a data
//! directory refuses first, so a configuration that cannot serve leaves no keyring, signing key,
//! admin token or store behind.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ledger::Ledger;
use proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::api::audit::AuditService;
use crate::api::ledger::LedgerService;
use crate::api::messaging::MessagingService;
use crate::api::privacy::{AdminService, PrivacyService};
use crate::api::views::ViewsService;
use crate::security::{tls, AuthLayer, TokenStore};
use config::ServeConfig;

/// How long a shutdown waits for in-flight requests and open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 receive window per stream (what a client may send before the server reads on).
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 receive window per connection, shared by its streams. It bounds what one connection
/// can make the server buffer unread, so it stays at a few appends' worth: 16 writers' 51 kB
/// appends fit.
const CONNECTION_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// The largest response message the streaming services send.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    // 1. Refusals that need no data directory: TLS files, channel accounts, listeners, plaintext.
    let grpc_tls = config.tls.as_ref().map(tls::grpc).transpose()?;
    let http_tls = config.tls.as_ref().map(tls::http).transpose()?;
    connectors::http::Webhooks::check_config(&config.connectors).map_err(refusing)?;
    let (grpc_listener, http_listener) = bind(&config).await?;
    // 2. The ledger (its startup check) and the token store.
    let ledger = open_ledger(&config).await?;
    let tokens = open_tokens(&config).await?;
    // 3. The services and what runs beside them: views, eraser, connectors, router, CRM push.
    let (shutdown_tx, shutdown) = watch::channel(false);
    crate::api::streams::set_stall_timeout(ms(config.timeouts.stream_stall_ms));
    let services = Services::start(&config, &ledger, &tokens, &shutdown)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    tokio::spawn(not_serving_when_poisoned(ledger.clone(), health.clone()));
    // 4. Both ports.
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let grpc_task = tokio::spawn(grpc_server(&config, &ledger, &tokens, services.grpc, health_service, grpc_listener, grpc_tls, shutdown.clone())?);
    let http_app = crate::http::router(ledger.clone(), prometheus, tokens.clone(), services.webhooks, config.crm.clone());
    let http_task = tokio::spawn(crate::http::serve(http_listener, http_app, http_tls, config.timeouts, shutdown.clone()));
    announce(&config, &ledger, grpc_addr, http_addr);
    // 5. Until a signal; then drain.
    shutdown_signal().await;
    health.set_not_serving::<pb::ledger_server::LedgerServer<LedgerService>>().await;
    let _ = shutdown_tx.send(true);
    drain(grpc_task, http_task).await?;
    ledger.shutdown().await;
    tracing::info!(tree_size = ledger.committed_size(), "ledger stopped");
    Ok(())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn refusing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("refusing to serve: {e}")
}

/// Binds both ports and refuses plaintext beyond loopback unless explicitly allowed.
async fn bind(config: &ServeConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(&config.grpc_addr).await.with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
    let http = TcpListener::bind(&config.http_addr).await.with_context(|| format!("binding HTTP address {}", config.http_addr))?;
    for (name, addr) in [("grpc", grpc.local_addr()?), ("http", http.local_addr()?)] {
        if addr.ip().is_loopback() || config.tls.is_some() {
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
    Ok((grpc, http))
}

/// Opens the ledger (running its startup check) on a blocking thread.
async fn open_ledger(config: &ServeConfig) -> anyhow::Result<Ledger> {
    let ledger_config = config.ledger.clone();
    let (ledger, report) = tokio::task::spawn_blocking(move || Ledger::open(ledger_config)).await?.map_err(refusing)?;
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
    Ok(ledger)
}

/// Opens the token store and, on a first start, writes the admin token. Its writes are synced:
/// on a blocking thread.
async fn open_tokens(config: &ServeConfig) -> anyhow::Result<Arc<TokenStore>> {
    let data_dir = config.ledger.data_dir.clone();
    let (tokens, bootstrapped) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let tokens = Arc::new(TokenStore::open(&data_dir.join("auth").join("tokens.json"))?);
        let bootstrapped = crate::security::bootstrap(&tokens, &data_dir)?;
        Ok((tokens, bootstrapped))
    })
    .await??;
    if let Some(path) = bootstrapped {
        tracing::warn!(path = %path.display(), "first start: created an admin token (0600); the CLI reads it from there, other clients send it as `authorization: Bearer <token>`");
    }
    Ok(tokens)
}

/// The gRPC services, and the webhooks of the HTTP port.
struct Services {
    grpc: GrpcServices,
    webhooks: Arc<connectors::http::Webhooks>,
}

struct GrpcServices {
    ledger: pb::ledger_server::LedgerServer<LedgerService>,
    audit: pb::audit_server::AuditServer<AuditService>,
    privacy: pb::privacy_server::PrivacyServer<PrivacyService>,
    admin: pb::admin_server::AdminServer<AdminService>,
    messaging: pb::messaging_server::MessagingServer<MessagingService>,
    views: pb::views_server::ViewsServer<ViewsService>,
}

impl Services {
    /// Builds every service and starts what runs beside them until `shutdown`: the views
    /// following the log, the eraser's outbox, the outbound connectors, the router (if routing is
    /// on) and the CRM push (if an endpoint is configured).
    fn start(config: &ServeConfig, ledger: &Ledger, tokens: &Arc<TokenStore>, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Services> {
        let max_request = config.ledger.limits.request_bytes_max;
        let views = projections::Runner::open(ledger.clone(), &projections::FOLLOWERS).map_err(refusing)?;
        let followed: Vec<Arc<dyn projections::View>> = projections::VIEWS.iter().filter_map(|n| projections::view_named(n)).collect();
        tokio::spawn(views.clone().follow(followed, shutdown.clone()));
        let eraser = erasure::Eraser::open(ledger.clone(), config.erasure.clone()).map_err(refusing)?;
        eraser.start(shutdown.clone());
        let ingestor = Arc::new(connectors::Ingestor::open(ledger.clone(), config.connectors.conversation_gap_secs).map_err(refusing)?);
        let webhooks = connectors::http::Webhooks::new(ingestor.clone(), config.connectors.clone()).map_err(refusing)?;
        let outbound = connectors::outbound::Outbound::new(ingestor, config.connectors.clone());
        outbound.start(shutdown.clone());
        if config.routing.enabled {
            let router = projections::router::Router::new(ledger.clone(), Some(outbound.clone()), config.rules.clone());
            tokio::spawn(router.run(views.clone(), ms(config.routing.sweep_interval_ms), shutdown.clone()));
        }
        let crm = (!config.crm.endpoint.is_empty()).then(|| projections::crm_push::CrmPush::new(ledger.clone(), views.clone(), config.crm.clone()));
        if let Some(crm) = &crm {
            tokio::spawn(crm.clone().run(shutdown.clone()));
        }
        let grpc = GrpcServices {
            ledger: pb::ledger_server::LedgerServer::new(LedgerService::new(ledger.clone(), shutdown.clone()))
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            audit: pb::audit_server::AuditServer::new(AuditService::new(ledger.clone(), views.clone()))
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            privacy: pb::privacy_server::PrivacyServer::new(PrivacyService::new(ledger.clone(), eraser))
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            admin: pb::admin_server::AdminServer::new(AdminService::new(ledger.clone(), views.clone(), tokens.clone())).max_decoding_message_size(max_request),
            messaging: pb::messaging_server::MessagingServer::new(MessagingService::new(ledger.clone(), outbound)).max_decoding_message_size(max_request),
            views: pb::views_server::ViewsServer::new(ViewsService::new(ledger.clone(), views, crm, config.rules.clone())).max_decoding_message_size(max_request),
        };
        Ok(Services { grpc, webhooks })
    }
}

type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// The gRPC port: authentication and quotas in front of every service, health and reflection.
#[allow(clippy::too_many_arguments)]
fn grpc_server(
    config: &ServeConfig,
    ledger: &Ledger,
    tokens: &Arc<TokenStore>,
    services: GrpcServices,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Serving> {
    let timeouts = config.timeouts;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let router = tonic::transport::Server::builder()
        // A unary call (reading its request included) that outlives this is cut off; streams
        // are bounded by the stall timeout instead.
        .timeout(ms(timeouts.request_ms))
        .http2_keepalive_interval(Some(ms(timeouts.keepalive_ms)))
        .http2_keepalive_timeout(Some(ms(timeouts.keepalive_ms)))
        .tcp_keepalive(Some(ms(timeouts.keepalive_ms)))
        // HTTP/2's default 64 KiB connection window is shared by every stream of a connection:
        // 16 writers sending 100-event appends over one connection would wait on window updates.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .layer(AuthLayer::new(tokens.clone(), ledger.clone(), config.quotas.clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(services.ledger)
        .add_service(services.audit)
        .add_service(services.privacy)
        .add_service(services.admin)
        .add_service(services.messaging)
        .add_service(services.views);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Ok(match tls {
        // Nagle's algorithm with delayed ACKs adds 40 ms stalls to small unary calls.
        None => Box::pin(router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopped)),
        Some(acceptor) => {
            let incoming = tls::incoming(listener, acceptor, ms(timeouts.handshake_ms), ledger.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    })
}

fn announce(config: &ServeConfig, ledger: &Ledger, grpc_addr: SocketAddr, http_addr: SocketAddr) {
    let regions: Vec<&str> = config.ledger.regions.iter().map(|r| r.as_str()).collect();
    tracing::info!(verifier_key = %ledger.verifier_key(), "signed tree heads are checkable with this verifier key");
    tracing::info!(
        grpc_addr = %grpc_addr,
        http_addr = %http_addr,
        regions = %regions.join(","),
        tls = %match &config.tls {
            None => "off",
            Some(t) if t.require_client_cert => "on, client certificate required",
            Some(t) if t.client_ca.is_some() => "on, client certificates or tokens",
            Some(_) => "on, tokens",
        },
        data_dir = %config.ledger.data_dir.display(),
        "ledger ready"
    );
}

/// Waits for in-flight appends to finish (the servers return once their connections close). A
/// client that never closes its connection cannot hold the process: after the grace period the
/// servers are dropped, and the writer still commits everything already queued.
async fn drain(grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, http: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    let (grpc_abort, http_abort) = (grpc.abort_handle(), http.abort_handle());
    match tokio::time::timeout(SHUTDOWN_GRACE, async { (grpc.await, http.await) }).await {
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
    Ok(())
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

/// Sets every service's health, and the whole server's (the empty service name).
async fn set_health(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    health.set_service_status(service_name::<pb::ledger_server::LedgerServer<LedgerService>>(), status).await;
    health.set_service_status(service_name::<pb::audit_server::AuditServer<AuditService>>(), status).await;
    health.set_service_status(service_name::<pb::privacy_server::PrivacyServer<PrivacyService>>(), status).await;
    health.set_service_status(service_name::<pb::admin_server::AdminServer<AdminService>>(), status).await;
    health.set_service_status(service_name::<pb::messaging_server::MessagingServer<MessagingService>>(), status).await;
    health.set_service_status(service_name::<pb::views_server::ViewsServer<ViewsService>>(), status).await;
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
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
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    // The empty service name is the whole server's status.
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}
