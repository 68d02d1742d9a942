//! The gRPC layer: the only part of the coordinator that sees prost types.
//! Each service converts its messages to domain types (through
//! `tributary_client::convert`, the same code the client uses), authenticates
//! mutating calls ([`auth`]), and writes each state change through
//! [`writer::LedgerTx`]: ledger entries and rows in one transaction, checked
//! by the ledger's rules, then a signed checkpoint.
//!
//! - [`error`]: [`ServiceError`] → `tonic::Status` with reason codes.
//! - [`auth`]: signed requests, replay protection, callers.
//! - [`writer`]: the transaction that appends entries.
//! - [`contributors`], [`consent`], [`ledger`], [`versions`], [`anchor`],
//!   [`submissions`]: one file per service.
//! - [`files`]: streaming checkpoint files out of the blob store.
//! - [`ports`]: the interfaces to the blob store and the validator.
//! - [`publish`]: publishing versions and ending consents, shared by the services
//!   and the background [`tasks`] (batch publishing, consent expiry).
//! - [`gate`]: the quality gate on the upload path.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use sqlx::PgPool;
use tributary_ledger::event::LogCreated;
use tributary_ledger::{
    Auditor, Event, NoteSigner, PublicKey, ReplayOptions, Sha256Digest, SignedEvent,
};

use crate::store::PgLedger;

pub mod anchor;
pub mod auth;
pub mod consent;
pub mod contributors;
pub mod error;
pub mod files;
pub mod gate;
pub mod ledger;
pub mod ports;
pub mod publish;
pub mod submissions;
pub mod tasks;
pub mod versions;
pub mod writer;

pub use error::{ServiceError, ServiceResult};

/// Limits the service enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How far a request's timestamp may be from the server's clock, in ms.
    pub request_window_ms: i64,
    /// Largest page a list call returns.
    pub max_page: u32,
    /// Largest expert payload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Uploads processed at once.
    pub max_concurrent_uploads: usize,
    /// Accepted range of an expert tensor's norm over the anchor's (DESIGN step 5).
    pub norm_ratio: std::ops::RangeInclusive<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_window_ms: 5 * 60 * 1000,
            max_page: 500,
            max_upload_bytes: 8 << 30,
            max_concurrent_uploads: 4,
            norm_ratio: 0.1..=10.0,
        }
    }
}

/// How the service decides and publishes, beyond its [`Limits`].
#[derive(Debug, Default)]
pub struct Policy {
    /// Limits.
    pub limits: Limits,
    /// The quality gate (DESIGN step 7), if the operator gave public validation text.
    pub gate: Option<gate::Gate>,
    /// Accepted experts wait for the batch publisher instead of publishing at once.
    pub batched_publishing: bool,
}

/// Everything a handler needs, shared by every service.
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The operator's key: seals entries, signs invites and checkpoints.
    pub operator: SigningKey,
    /// The same key as a C2SP note signer named after the log's origin.
    pub note_signer: NoteSigner,
    /// The log's origin (checkpoint first line).
    pub origin: String,
    /// The rules, fed with every committed entry.
    pub auditor: tokio::sync::Mutex<Auditor>,
    /// Limits.
    pub limits: Limits,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Upload slots ([`Limits::max_concurrent_uploads`]).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// The quality gate, if configured.
    pub gate: Option<gate::Gate>,
    /// Whether accepted experts wait for the batch publisher.
    pub batched_publishing: bool,
    /// SHA-256 of assembled `model.safetensors` files, by version manifest digest.
    assembled: std::sync::Mutex<std::collections::HashMap<Sha256Digest, Sha256Digest>>,
    /// Where erased experts' weights are deleted.
    pub blobs: Arc<dyn ports::BlobEraser>,
    /// The content-addressed blob store (uploaded experts, the anchor).
    pub store: crate::blobs::BlobStore,
    /// The current anchor uploads are validated against, if any (read it
    /// with [`AppState::current_anchor`]; publishing an anchor replaces it).
    anchor: std::sync::RwLock<Option<Arc<crate::validate::AnchorReference>>>,
    /// Limits of the streaming validation.
    pub validation: crate::validate::ValidationLimits,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("origin", &self.origin)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Loads the ledger into the rules, starting the log (`LogCreated` and a
    /// first checkpoint) when the database holds none. Refuses a log created
    /// by another operator key or for another origin.
    pub async fn open(
        pool: PgPool,
        note_signer: NoteSigner,
        operator: SigningKey,
        store: crate::blobs::BlobStore,
        anchor: Option<Arc<crate::validate::AnchorReference>>,
        policy: Policy,
    ) -> Result<Arc<Self>, ServiceError> {
        let Policy {
            limits,
            gate,
            batched_publishing,
        } = policy;
        let validation = crate::validate::ValidationLimits {
            max_payload_bytes: limits.max_upload_bytes,
            norm_ratio_min: *limits.norm_ratio.start(),
            norm_ratio_max: *limits.norm_ratio.end(),
            ..crate::validate::ValidationLimits::default()
        };
        let origin = note_signer.verifier().name().to_string();
        let auditor = Auditor::new(&ReplayOptions {
            operator_key: Some(PublicKey::of(&operator)),
            checkpoints: Vec::new(),
        });
        let state = Arc::new(Self {
            pool,
            operator,
            note_signer,
            origin,
            auditor: tokio::sync::Mutex::new(auditor),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_uploads.max(1),
            )),
            limits,
            metrics: crate::metrics::Metrics::default(),
            gate,
            batched_publishing,
            assembled: std::sync::Mutex::default(),
            blobs: Arc::new(store.clone()),
            store,
            anchor: std::sync::RwLock::new(anchor),
            validation,
        });
        let mut conn = state.pool.acquire().await?;
        if PgLedger::size(&mut *conn).await? == 0 {
            let tx = state.pool.begin().await?;
            let mut ledger = writer::LedgerTx::begin(&state, tx).await?;
            if ledger.ledger_state().origin.is_none() {
                ledger
                    .append(SignedEvent::coordinator(Event::LogCreated(LogCreated {
                        origin: state.origin.clone(),
                        operator_key: PublicKey::of(&state.operator),
                    })))
                    .await?;
            }
            ledger.commit().await?;
        }
        {
            let mut auditor = state.auditor.lock().await;
            writer::catch_up(&mut auditor, &mut conn).await?;
            let derived = auditor.state();
            if derived.operator_key != Some(PublicKey::of(&state.operator))
                || derived.origin.as_deref() != Some(state.origin.as_str())
            {
                return Err(ServiceError::internal(format!(
                    "the database holds the log of origin {:?} with another operator key; this \
                     coordinator's key is for {:?}",
                    derived.origin, state.origin
                )));
            }
            state
                .metrics
                .ledger_size
                .store(auditor.size(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(state)
    }
}

impl AppState {
    /// The anchor uploads are validated against now.
    pub fn current_anchor(&self) -> Option<Arc<crate::validate::AnchorReference>> {
        self.anchor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The SHA-256 of the `model.safetensors` assembled for a version whose
    /// manifest digest is `checkpoint`, if this process computed it.
    pub fn assembled_sha(&self, checkpoint: &Sha256Digest) -> Option<Sha256Digest> {
        self.assembled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(checkpoint)
            .copied()
    }

    /// Remembers [`AppState::assembled_sha`].
    pub fn remember_assembled_sha(&self, checkpoint: Sha256Digest, sha: Sha256Digest) {
        self.assembled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(checkpoint, sha);
    }

    /// The current anchor as the database records it, which is what uploads
    /// are validated against: another coordinator on the same database may
    /// have published one since this process loaded its own, and then that
    /// one is loaded from the blob store (one query when nothing changed).
    pub async fn fresh_anchor(
        &self,
    ) -> ServiceResult<Option<Arc<crate::validate::AnchorReference>>> {
        let mut conn = self.pool.acquire().await?;
        let row = crate::anchor_store::find(&mut conn, None).await?;
        drop(conn);
        let known = self.current_anchor();
        let Some(row) = row else { return Ok(known) };
        if let Some(anchor) = known
            && anchor.digest == row.digest
        {
            return Ok(Some(anchor));
        }
        let reference = crate::anchor_store::load_reference(&self.store, &row.files).await?;
        self.set_current_anchor(reference.clone());
        tracing::info!(anchor = %row.digest, "another coordinator made this anchor current; loaded it");
        Ok(Some(reference))
    }

    /// Makes `anchor` the one new uploads are validated against.
    pub fn set_current_anchor(&self, anchor: Arc<crate::validate::AnchorReference>) {
        *self
            .anchor
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(anchor);
    }
}

/// Turns a page token into the value it carries (empty: the first page).
pub fn page_token(token: &str) -> ServiceResult<Option<u64>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| ServiceError::invalid("BAD_PAGE_TOKEN", "the page token is not one we issued"))
}

/// The page size to use for a request.
pub fn page_size(state: &AppState, page: Option<&tributary_protos::v1::PageRequest>) -> u32 {
    match page.map(|p| p.page_size) {
        None | Some(0) => 100.min(state.limits.max_page),
        Some(n) => n.min(state.limits.max_page),
    }
}
