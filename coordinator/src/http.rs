//! The read-only HTTP side: the ledger as C2SP `tlog-tiles` (`/checkpoint`,
//! `/tile/<L>/<N>[.p/<W>]`, `/tile/entries/<N>[.p/<W>]`) so existing tlog
//! clients can read and verify it, and `/metrics` in the Prometheus text format.

use std::sync::Arc;

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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
