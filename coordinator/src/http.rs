//! The read-only HTTP side: the ledger as C2SP `tlog-tiles` (`/checkpoint`,
//! `/tile/<L>/<N>[.p/<W>]`, `/tile/entries/<N>[.p/<W>]`) so existing tlog
//! clients can read and verify it, and `/metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tributary_ledger::tiles::{TilePath, encode_entry_bundle, parse_tile_path};

use crate::service::AppState;
use crate::store::PgLedger;
use crate::store::state::latest_checkpoint;

/// The router of the HTTP side.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn failure(error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "http read failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

async fn checkpoint(State(state): State<Arc<AppState>>) -> Response {
    match latest_checkpoint(&state.pool).await {
        Ok(Some(c)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            c.note,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no checkpoint yet\n").into_response(),
        Err(e) => failure(e),
    }
}

async fn tile(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    let Ok(parsed) = parse_tile_path(&format!("tile/{path}")) else {
        return (StatusCode::NOT_FOUND, "not a tile path\n").into_response();
    };
    let size = match latest_checkpoint(&state.pool).await {
        Ok(Some(c)) => c.size,
        Ok(None) => 0,
        Err(e) => return failure(e),
    };
    let immutable = [(header::CACHE_CONTROL, "public, max-age=31536000, immutable")];
    match parsed {
        TilePath::Hashes(tile) => {
            let nodes = tile.nodes();
            // Every hash of the tile must be a complete subtree within the checkpoint.
            let covered = nodes.last().is_some_and(|last| {
                u32::from(last.level) < 64
                    && (last.index.saturating_add(1))
                        .checked_shl(u32::from(last.level))
                        .is_some_and(|end| end <= size)
            });
            if !covered {
                return (StatusCode::NOT_FOUND, "tile beyond the checkpoint\n").into_response();
            }
            match PgLedger::read_hashes(&state.pool, &nodes).await {
                Ok(hashes) => {
                    let body: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
                    (immutable, body).into_response()
                }
                Err(e) => failure(e),
            }
        }
        TilePath::Entries(bundle) => {
            let range = bundle.entries();
            if range.end > size {
                return (StatusCode::NOT_FOUND, "bundle beyond the checkpoint\n").into_response();
            }
            match PgLedger::entries(&state.pool, range.start, range.end).await {
                Ok(entries) if entries.len() as u64 == range.end - range.start => {
                    let bytes: Vec<Vec<u8>> = entries.into_iter().map(|(_, b)| b).collect();
                    match encode_entry_bundle(&bytes) {
                        Ok(body) => (immutable, body).into_response(),
                        Err(e) => failure(e),
                    }
                }
                Ok(_) => failure("entries missing below the checkpoint"),
                Err(e) => failure(e),
            }
        }
    }
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
