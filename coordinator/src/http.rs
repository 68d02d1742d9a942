//! The read-only HTTP side: the ledger as C2SP `tlog-tiles` (`/checkpoint`,
//! `/tile/<L>/<N>[.p/<W>]`, `/tile/entries/<N>[.p/<W>]`) so existing tlog
//! clients can read and verify it, and `/metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::service::AppState;

/// The router of the HTTP side: the tlog-tiles routes of [`crate::tiles`] and
/// `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    crate::tiles::router(state.pool.clone()).merge(metrics)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let body = format!(
        "# HELP tributary_ledger_entries Entries in the consent ledger.\n\
         # TYPE tributary_ledger_entries gauge\n\
         tributary_ledger_entries {}\n\
         # HELP tributary_grpc_requests_total gRPC requests answered.\n\
         # TYPE tributary_grpc_requests_total counter\n\
         tributary_grpc_requests_total {}\n\
         # HELP tributary_grpc_refused_total gRPC requests answered with an error status.\n\
         # TYPE tributary_grpc_refused_total counter\n\
         tributary_grpc_refused_total {}\n",
        m.ledger_size.load(Ordering::Relaxed),
        m.requests.load(Ordering::Relaxed),
        m.refused.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
