//! [`LedgerTx`]: one state change — its ledger entries and its rows in one
//! Postgres transaction, checked by the ledger's [`Auditor`] before commit,
//! followed by a signed checkpoint of the new tree and receipts.
//!
//! The process keeps one [`Auditor`] fed with every committed entry. A write
//! takes it (one writer per process), takes the database's append lock (one
//! writer across processes), feeds it the entries other coordinators appended
//! meanwhile, and tries the new entries on a copy. An entry that breaks a
//! rule, or a state change that leaves a duty undone (a withdrawal without
//! its replacement version or erasure), aborts the transaction: the
//! coordinator never appends a violating event.

use ed25519_dalek::SigningKey;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::MutexGuard;
use tonic::Code;
use tributary_ledger::{Auditor, Checkpoint, LedgerIndex, Receipt, SignedEvent, Timestamp};

use super::AppState;
use super::error::{ServiceError, ServiceResult};
use crate::store::state::{self as rows, StoredCheckpoint};
use crate::store::{AppendedEntry, PgLedger, StoreError};

/// A transaction that appends ledger entries.
pub struct LedgerTx<'s> {
    state: &'s AppState,
    tx: Transaction<'static, Postgres>,
    auditor: MutexGuard<'s, Auditor>,
    trial: Auditor,
    baseline: usize,
    appended: Vec<AppendedEntry>,
}

/// Feeds `auditor` the committed entries it has not seen.
pub async fn catch_up(auditor: &mut Auditor, conn: &mut PgConnection) -> Result<(), StoreError> {
    let size = PgLedger::size(&mut *conn).await?;
    while auditor.size() < size {
        let page = PgLedger::entries(&mut *conn, auditor.size(), size).await?;
        if page.is_empty() {
            return Err(StoreError::Corrupt(
                "ledger entries stop short of its size".into(),
            ));
        }
        for (_, bytes) in page {
            let violations = auditor.append(&bytes);
            if !violations.is_empty() {
                tracing::error!(?violations, "the stored ledger breaks a rule");
            }
        }
    }
    Ok(())
}

/// The current time in seconds.
pub fn now() -> Timestamp {
    Timestamp(u64::try_from(tributary_client::signing::now_unix_ms() / 1000).unwrap_or(0))
}

/// Signs and stores the checkpoint of the first `size` entries.
pub async fn sign_checkpoint(
    conn: &mut PgConnection,
    state: &AppState,
    size: u64,
) -> ServiceResult<StoredCheckpoint> {
    let root = PgLedger::root(&mut *conn, size).await?;
    let note = Checkpoint::new(state.origin.clone(), size, root)
        .sign(&state.note_signer)
        .map_err(ServiceError::internal)?;
    let stored = StoredCheckpoint { size, root, note };
    rows::insert_checkpoint(&mut *conn, &stored).await?;
    Ok(stored)
}

impl<'s> LedgerTx<'s> {
    /// Starts appending in `tx` (which may already hold the request's nonce).
    pub async fn begin(
        state: &'s AppState,
        mut tx: Transaction<'static, Postgres>,
    ) -> ServiceResult<Self> {
        let mut auditor = state.auditor.lock().await;
        PgLedger::lock(&mut *tx).await?;
        catch_up(&mut auditor, &mut tx).await?;
        let trial = auditor.clone();
        let baseline = trial.violations().len();
        Ok(Self {
            state,
            tx,
            auditor,
            trial,
            baseline,
            appended: Vec::new(),
        })
    }

    /// The transaction, for the rows of the change.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The state derived from the log including the entries appended so far.
    pub fn ledger_state(&self) -> &tributary_ledger::LedgerState {
        self.trial.state()
    }

    /// The operator's key, which seals entries.
    fn operator(&self) -> &SigningKey {
        &self.state.operator
    }

    /// Appends one event, refusing it if it breaks a ledger rule.
    pub async fn append(&mut self, signed: SignedEvent) -> ServiceResult<AppendedEntry> {
        let operator = self.operator().clone();
        let appended = PgLedger::append(&mut self.tx, signed, now(), &operator).await?;
        let violations = self.trial.append(&appended.bytes);
        if let Some(v) = violations.first() {
            return Err(ServiceError::new(
                Code::FailedPrecondition,
                "LEDGER_RULE",
                format!(
                    "the {} entry would break rule {:?}: {}",
                    appended.entry.event.kind(),
                    v.rule,
                    v.reason
                ),
            ));
        }
        self.appended.push(appended.clone());
        Ok(appended)
    }

    /// Checks that no duty is left open, signs the checkpoint of the new tree,
    /// commits, and returns a receipt for each appended entry, in order.
    pub async fn commit(mut self) -> ServiceResult<Vec<Receipt>> {
        let finished = self.trial.clone().finish();
        if finished.violations.len() > self.baseline {
            let v = &finished.violations[finished.violations.len() - 1];
            return Err(ServiceError::new(
                Code::FailedPrecondition,
                "LEDGER_RULE",
                format!(
                    "the change would leave rule {:?} broken: {}",
                    v.rule, v.reason
                ),
            ));
        }
        let Some(last) = self.appended.last() else {
            self.tx.commit().await?;
            return Ok(Vec::new());
        };
        let size = last.size;
        let checkpoint = sign_checkpoint(&mut self.tx, self.state, size).await?;
        let mut receipts = Vec::with_capacity(self.appended.len());
        for appended in &self.appended {
            let proof = PgLedger::inclusion_proof(&mut *self.tx, appended.index(), size).await?;
            receipts.push(Receipt {
                entry: appended.bytes.clone(),
                index: LedgerIndex(appended.index()),
                proof,
                checkpoint: checkpoint.note.clone(),
            });
        }
        self.tx.commit().await?;
        *self.auditor = self.trial;
        self.state
            .metrics
            .ledger_size
            .store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(receipts)
    }
}

/// A receipt for an entry already committed, against the latest checkpoint.
pub async fn receipt_for(conn: &mut PgConnection, index: u64) -> ServiceResult<Receipt> {
    let checkpoint = rows::latest_checkpoint(&mut *conn)
        .await?
        .ok_or_else(|| ServiceError::internal("no checkpoint is stored"))?;
    let entries = PgLedger::entries(&mut *conn, index, index + 1).await?;
    let Some((_, bytes)) = entries.into_iter().next() else {
        return Err(ServiceError::not_found(
            "UNKNOWN_ENTRY",
            format!("no entry {index}"),
        ));
    };
    let proof = PgLedger::inclusion_proof(&mut *conn, index, checkpoint.size).await?;
    Ok(Receipt {
        entry: bytes,
        index: LedgerIndex(index),
        proof,
        checkpoint: checkpoint.note,
    })
}
