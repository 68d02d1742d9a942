//! The consent ledger's read-only HTTP side in the C2SP `tlog-tiles` layout,
//! served from the Postgres store so that any tlog client can read and verify
//! the log without an account:
//!
//! - `GET /checkpoint`: the latest signed checkpoint note (`ledger_checkpoints`);
//! - `GET /tile/<L>/<N>[.p/<W>]`: a hash tile (height 8), read from the stored
//!   complete-subtree hashes (`ledger_tree_hashes`) in one range query;
//! - `GET /tile/entries/<N>[.p/<W>]`: an entry bundle, each entry as a
//!   big-endian `u16` length and its bytes (`ledger_entries`), one range query.
//!
//! Paths are parsed with [`tributary_ledger::tiles::parse_tile_path`], which
//! accepts only the canonical spelling: anything else is `400`. A tile or
//! bundle reaching past the stored tree is `404`. Tiles and bundles are
//! immutable once they exist (a partial tile of width `W` never changes
//! either), so they are served with a year-long `immutable` cache header; the
//! checkpoint changes with every append and is served `no-cache`.
//!
//! Tiles are served for every size the store holds, which includes every size
//! a checkpoint was signed for (the spec's requirement); tiles past the latest
//! checkpoint are harmless, since clients only fetch what a checkpoint covers.
//!
//! Wiring: [`serve_tiles`] takes a bound listener, a pool and a shutdown
//! future (tests bind `127.0.0.1:0`); [`router`] gives the bare axum router
//! for embedding under another server.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::{PgExecutor, PgPool, Row as _};
use tributary_ledger::Hash;
use tributary_ledger::tiles::{
    BundleId, TILE_HEIGHT, TILE_WIDTH, TileId, TilePath, encode_entry_bundle, parse_tile_path,
};

use crate::store::{StoreError, to_i64, to_u64};

/// `Cache-Control` of tiles and entry bundles: their contents never change.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of the checkpoint: it changes with every append.
pub const NO_CACHE: &str = "no-cache";

/// `Content-Type` of the checkpoint note (the spec's).
pub const CHECKPOINT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// `Content-Type` of tiles and entry bundles (the spec's).
pub const TILE_CONTENT_TYPE: &str = "application/octet-stream";

/// Why a request was not answered with its resource. Each maps to one status
/// and a one-line plain-text body; internal causes are logged, not sent.
#[derive(Debug, thiserror::Error)]
pub enum TilesError {
    /// The path is not a canonical tile or bundle path (400).
    #[error("bad request: {0}")]
    BadPath(String),
    /// The resource does not exist (yet) (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The store failed or holds corrupt data (500).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl IntoResponse for TilesError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            TilesError::BadPath(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            TilesError::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()),
            TilesError::Store(cause) => {
                tracing::error!(error = %cause, "tlog-tiles request failed in storage");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: the ledger could not be read".to_string(),
                )
            }
        };
        let mut response = (status, format!("{body}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CHECKPOINT_CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
        response
    }
}

/// The tlog-tiles routes over a pool. Unknown paths are `404`, other methods
/// than `GET`/`HEAD` on known paths `405`.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*rest}", get(tile))
        .fallback(unknown)
        .with_state(pool)
}

/// Serves the tlog-tiles routes on `listener` until `shutdown` completes, then
/// finishes the requests in flight and returns.
pub async fn serve_tiles(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn checkpoint(State(pool): State<PgPool>) -> Result<Response, TilesError> {
    let note = latest_checkpoint(&pool)
        .await?
        .ok_or_else(|| TilesError::NotFound("no checkpoint has been signed yet".into()))?;
    Ok((
        [
            (header::CONTENT_TYPE, CHECKPOINT_CONTENT_TYPE),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
        note,
    )
        .into_response())
}

async fn tile(State(pool): State<PgPool>, uri: Uri) -> Result<Response, TilesError> {
    // The raw path, not percent-decoded: a canonical tile path has nothing to decode.
    let path = uri.path().trim_start_matches('/');
    let parsed = parse_tile_path(path).map_err(|e| TilesError::BadPath(escape(&e.to_string())))?;
    let body = match parsed {
        TilePath::Hashes(id) => read_tile(&pool, &id).await?,
        TilePath::Entries(id) => read_bundle(&pool, &id).await?,
    }
    .ok_or_else(|| TilesError::NotFound(format!("{path} is beyond the tree")))?;
    Ok((
        [
            (header::CONTENT_TYPE, TILE_CONTENT_TYPE),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        body,
    )
        .into_response())
}

async fn unknown(uri: Uri) -> TilesError {
    // `/tile/` with nothing after it misses the `/tile/{*rest}` route.
    if uri.path().starts_with("/tile/") {
        return TilesError::BadPath(format!("not a tile path: {}", escape(uri.path())));
    }
    TilesError::NotFound(format!(
        "{}: this server serves /checkpoint and /tile/…",
        escape(uri.path())
    ))
}

/// Keeps an echoed path on one printable line.
fn escape(text: &str) -> String {
    text.chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect()
}

/// The latest signed checkpoint note (the one of the largest tree), if any.
pub async fn latest_checkpoint(conn: impl PgExecutor<'_>) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar(r"SELECT note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(conn)
            .await?,
    )
}

/// The stored half-open index range `[start, start + width)` of a tile or
/// bundle at tree level `level`, or `None` when it cannot exist.
fn stored_range(level: u32, index: u64, width: u16) -> Option<(i64, i64)> {
    if level > 63 || width == 0 || u64::from(width) > TILE_WIDTH {
        return None;
    }
    let start = index.checked_mul(TILE_WIDTH)?;
    let end = start.checked_add(u64::from(width))?;
    Some((to_i64(start, "").ok()?, to_i64(end, "").ok()?))
}

/// A tile's bytes (its hashes concatenated), or `None` when the stored tree
/// does not yet hold all of them.
pub async fn read_tile(
    conn: impl PgExecutor<'_>,
    tile: &TileId,
) -> Result<Option<Vec<u8>>, StoreError> {
    let level = u32::from(tile.level) * u32::from(TILE_HEIGHT);
    let Some((start, end)) = stored_range(level, tile.index, tile.width) else {
        return Ok(None);
    };
    let rows = sqlx::query(
        r"SELECT idx, hash FROM ledger_tree_hashes
          WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
    )
    .bind(i16::try_from(level).map_err(|_| StoreError::Corrupt("tile level".into()))?)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await?;
    if rows.len() != usize::from(tile.width) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(rows.len() * 32);
    for (expected, row) in (start..end).zip(&rows) {
        let idx: i64 = row.try_get("idx")?;
        let bytes: Vec<u8> = row.try_get("hash")?;
        if idx != expected {
            return Err(StoreError::Corrupt(format!(
                "tree hashes at level {level} skip index {expected}"
            )));
        }
        let hash = Hash::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("tree hash at level {level}: {e}")))?;
        out.extend_from_slice(hash.as_bytes());
    }
    Ok(Some(out))
}

/// An entry bundle's bytes, or `None` when the log does not yet hold all its entries.
pub async fn read_bundle(
    conn: impl PgExecutor<'_>,
    bundle: &BundleId,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some((start, end)) = stored_range(0, bundle.index, bundle.width) else {
        return Ok(None);
    };
    let rows = sqlx::query(
        r"SELECT idx, bytes FROM ledger_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
    )
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await?;
    if rows.len() != usize::from(bundle.width) {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(rows.len());
    for (expected, row) in (start..end).zip(&rows) {
        let idx: i64 = row.try_get("idx")?;
        if idx != expected {
            return Err(StoreError::Corrupt(format!(
                "ledger entries skip index {}",
                to_u64(expected, "ledger index")?
            )));
        }
        entries.push(row.try_get::<Vec<u8>, _>("bytes")?);
    }
    let bytes = encode_entry_bundle(&entries)
        .map_err(|e| StoreError::Corrupt(format!("entry bundle {}: {e}", bundle.path())))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_impossible_tiles() {
        assert_eq!(stored_range(0, 0, 256), Some((0, 256)));
        assert_eq!(stored_range(8, 2, 17), Some((512, 529)));
        assert_eq!(stored_range(64, 0, 1), None);
        assert_eq!(stored_range(0, 0, 0), None);
        assert_eq!(stored_range(0, u64::MAX / 256, 256), None);
        assert_eq!(stored_range(0, u64::MAX, 1), None);
    }

    #[test]
    fn echoed_paths_stay_on_one_line() {
        assert_eq!(escape("tile/0/\n\u{0}x"), "tile/0/\\n\\u{0}x");
        assert_eq!(escape(&"a".repeat(1000)).len(), 200);
    }
}
