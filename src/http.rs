//! The HTTP port: `/healthz` (the process is up), `/readyz` (the ledger accepts writes),
//! Prometheus `/metrics`, the channel webhooks (`connectors::http`)
//! and the CRM's (`/webhooks/crm`).

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
}

/// The HTTP routes.
pub fn router(ledger: Ledger, prometheus: PrometheusHandle, webhooks: std::sync::Arc<connectors::http::Webhooks>, crm: projections::crm_push::CrmConfig) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { ledger: ledger.clone(), prometheus })
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

async fn metrics_text(State(s): State<AppState>) -> String {
    let ledger = s.ledger.clone();
    let size = tokio::task::spawn_blocking(move || ledger.store_size_bytes()).await.unwrap_or(0);
    metrics::gauge!("ledger_store_size_bytes").set(size as f64);
    metrics::gauge!("ledger_committed_position").set(s.ledger.committed_size() as f64);
    s.prometheus.render()
}
