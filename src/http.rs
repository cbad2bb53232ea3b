//! The HTTP port: `/healthz` (the process is up), `/readyz` (the ledger accepts writes),
//! Prometheus `/metrics` (a bearer token of an `admin` or `auditor`), the channel webhooks
//! (`connectors::http`, authenticated by the providers' signatures) and the CRM's
//! (`/webhooks/crm`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use ledger::Ledger;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
struct AppState {
    ledger: Ledger,
    prometheus: PrometheusHandle,
    tokens: std::sync::Arc<crate::security::TokenStore>,
}

/// The HTTP routes.
pub fn router(
    ledger: Ledger,
    prometheus: PrometheusHandle,
    tokens: std::sync::Arc<crate::security::TokenStore>,
    webhooks: std::sync::Arc<connectors::http::Webhooks>,
    crm: projections::crm_push::CrmConfig,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { ledger: ledger.clone(), prometheus, tokens })
        .merge(connectors::http::router(webhooks))
        .merge(projections::crm_push::crm_router(ledger, crm))
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ledger.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if s.ledger.is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "store poisoned after a failed write; restart required\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics_text(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    use crate::security::Role;
    match crate::security::bearer(&headers).map(|t| s.tokens.authenticate(t)) {
        None => return Err((StatusCode::UNAUTHORIZED, "send `authorization: Bearer <token>` of an admin or auditor\n")),
        Some(Err(_)) => return Err((StatusCode::UNAUTHORIZED, "unknown, expired or revoked token\n")),
        Some(Ok(p)) if !p.has_any(&[Role::Admin, Role::Auditor]) => return Err((StatusCode::FORBIDDEN, "metrics need the admin or auditor role\n")),
        Some(Ok(_)) => {}
    }
    let ledger = s.ledger.clone();
    let size = tokio::task::spawn_blocking(move || ledger.store_size_bytes()).await.unwrap_or(0);
    metrics::gauge!("ledger_store_size_bytes").set(size as f64);
    metrics::gauge!("ledger_committed_position").set(s.ledger.committed_size() as f64);
    Ok(s.prometheus.render())
}

/// Serves `app` on `listener` until `stop`: TLS when `tls` is set, each handshake on its own
/// task (a client that stalls its handshake holds only itself, for `timeouts.handshake_ms`),
/// HTTP/1 request headers within `timeouts.http_header_ms`, and idle HTTP/2 connections pinged.
/// In-flight requests finish before it returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeouts: crate::serve::config::Timeouts,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use std::time::Duration;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(timeouts.http_header_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(timeouts.keepalive_ms))
        .keep_alive_timeout(Duration::from_millis(timeouts.keepalive_ms));
    let builder = std::sync::Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshake = Duration::from_millis(timeouts.handshake_ms);
    let mut stopping = std::pin::pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    loop {
        let (tcp, _) = tokio::select! {
            accepted = crate::security::tls::accept(&listener, "HTTP") => accepted,
            _ = &mut stopping => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, tls, watcher) = (builder.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let result = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned()).await,
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP TLS handshake failed"),
                    Err(_) => return tracing::debug!("HTTP TLS handshake timed out"),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    // The caller bounds this wait by its shutdown grace period.
    graceful.shutdown().await;
}
