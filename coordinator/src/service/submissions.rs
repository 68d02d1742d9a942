//! `SubmissionService`: expert uploads and their validation status.
//!
//! Reading submissions works from the `submissions` and `validation_results`
//! tables. `UploadExpert` runs DESIGN's steps in order:
//!
//! 1. the header's request signature, replay check and contributor, in a
//!    short transaction of its own (no connection is held while the payload
//!    streams); a duplicate of an accepted expert answers the existing
//!    submission;
//! 2. the manifest signature (refused outright: its entry could not verify);
//! 3. an upload slot ([`super::Limits::max_concurrent_uploads`]; beyond it
//!    `UNAVAILABLE` / `TOO_MANY_UPLOADS`);
//! 4. steps 3-5 streaming: every chunk to the validator and a staged blob
//!    writer, in constant memory;
//! 5. step 6, an active consent covering the digest; the blob is committed;
//! 6. step 7, the quality gate ([`super::gate`]), when configured.
//!
//! A failed check is recorded in one [`LedgerTx`] (`ExpertSubmitted` +
//! `ExpertRejected` with every result and the reason code) and its blob
//! removed; a pass is recorded (`ExpertSubmitted` + `ExpertAccepted`) with,
//! unless publishing is batched, a new version per consented purpose, after
//! a fresh look at the consent inside the transaction.

use std::sync::Arc;

use sqlx::Row as _;
use tonic::{Code, Request, Response, Status, Streaming};
use tributary_client::convert;
use tributary_protos::v1;
use tributary_protos::v1::submission_service_server::SubmissionService;

use tributary_ledger::event::{
    ExpertAccepted, ExpertManifest, ExpertRejected, ExpertSubmitted, Figure, ValidationResult,
    VersionExpert,
};
use tributary_ledger::{
    ContributorId, Event, ExpertDigest, ReasonCode, Sha256Digest, Signature, SignedEvent,
    SubmissionId,
};

use super::writer::{LedgerTx, now, receipt_for};
use super::{AppState, ServiceError, ServiceResult, auth, page_size, page_token, publish};
use crate::blobs::BlobWriter;
use crate::store::records::{self, ContributorRecord};
use crate::store::state::{self as rows, ConsentRow, ConsentState};
use crate::validate::{
    Rejection, StepResult, UploadValidator, ValidationOutcome, verify_manifest_signature,
};

/// The service.
#[derive(Debug, Clone)]
pub struct Submissions(pub Arc<AppState>);

fn state_of(text: &str) -> v1::SubmissionState {
    match text {
        "validating" => v1::SubmissionState::Validating,
        "accepted" => v1::SubmissionState::Accepted,
        "rejected" => v1::SubmissionState::Rejected,
        "erased" => v1::SubmissionState::Erased,
        _ => v1::SubmissionState::Unspecified,
    }
}

impl Submissions {
    async fn status(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &str,
    ) -> ServiceResult<v1::SubmissionStatus> {
        let row = sqlx::query(
            r"SELECT contributor_id, expert_digest, state, reason_code, submitted_idx, decided_idx
              FROM submissions WHERE submission_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            ServiceError::not_found("UNKNOWN_SUBMISSION", format!("no submission {id:?}"))
        })?;
        let results = sqlx::query(
            r"SELECT step, passed, figure, reason_code, detail FROM validation_results
              WHERE submission_id = $1 ORDER BY step_no",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let submitted: i64 = row.try_get("submitted_idx")?;
        let decided: Option<i64> = row.try_get("decided_idx")?;
        let submitted = receipt_for(conn, u64::try_from(submitted).unwrap_or(0)).await?;
        let decided = match decided {
            Some(i) => Some(receipt_for(conn, u64::try_from(i).unwrap_or(0)).await?),
            None => None,
        };
        Ok(v1::SubmissionStatus {
            submission_id: id.to_string(),
            contributor_id: row.try_get("contributor_id")?,
            expert: Some(v1::Digest {
                sha256: row.try_get("expert_digest")?,
            }),
            state: state_of(&row.try_get::<String, _>("state")?) as i32,
            reason_code: row
                .try_get::<Option<String>, _>("reason_code")?
                .unwrap_or_default(),
            results: results
                .iter()
                .map(|r| {
                    Ok(v1::ValidationResult {
                        step: r.try_get("step")?,
                        passed: r.try_get("passed")?,
                        figure: r
                            .try_get::<Option<String>, _>("figure")?
                            .unwrap_or_default(),
                        reason_code: r
                            .try_get::<Option<String>, _>("reason_code")?
                            .unwrap_or_default(),
                        detail: r.try_get("detail")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?,
            submitted: Some(convert::receipt_to_proto(&submitted)),
            decided: decided.as_ref().map(convert::receipt_to_proto),
        })
    }

    async fn upload(
        &self,
        mut stream: Streaming<v1::UploadExpertRequest>,
    ) -> ServiceResult<v1::SubmissionStatus> {
        let started = std::time::Instant::now();
        let header = read_header(&mut stream).await?;
        let state = &self.0;
        // Step 1 in its own short transaction: the nonce is spent whatever
        // follows, and no connection is held while the payload streams.
        let record = {
            let mut tx = state.pool.begin().await?;
            let record = auth::authenticate(state, &mut tx, &header)
                .await?
                .contributor()?
                .clone();
            tx.commit().await?;
            record
        };
        if record.contributor.as_str() != header.contributor_id {
            return Err(ServiceError::not_owner(
                "the upload names another contributor",
            ));
        }
        let submission = SubmissionId::new(header.submission_id.as_str())
            .map_err(|e| ServiceError::invalid("MALFORMED_REQUEST", e.to_string()))?;
        let manifest = convert::manifest_from_proto(header.manifest.as_ref())?;
        let signature =
            convert::signature("manifest_signature", header.manifest_signature.as_ref())?;
        let digest = manifest.total;
        let upload = Upload {
            submission,
            record,
            manifest,
            signature,
            size: header.payload_size,
        };
        if let Some(id) = self.existing(&upload).await? {
            return self.answer(&id).await;
        }

        // Step 2: the manifest signature. Its entry could not be recorded (it
        // would carry a signature that does not verify), so it is refused.
        let signed = verify_manifest_signature(
            &upload.submission,
            &upload.record.contributor,
            &upload.manifest,
            &upload.signature,
            &upload.record.public_key,
        );
        if !signed.passed {
            return Err(ServiceError::new(
                Code::PermissionDenied,
                "BAD_MANIFEST_SIGNATURE",
                signed.detail,
            ));
        }
        let anchor = state.fresh_anchor().await?.ok_or_else(|| {
            ServiceError::new(
                Code::FailedPrecondition,
                "NO_ANCHOR",
                "the coordinator has no anchor (serve --anchor, or PublishAnchor)",
            )
        })?;
        let _permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
            ServiceError::new(
                Code::Unavailable,
                "TOO_MANY_UPLOADS",
                format!(
                    "{} uploads are being validated; retry later",
                    state.limits.max_concurrent_uploads
                ),
            )
        })?;

        // Steps 3-5, streaming.
        let mut results = vec![Step::from(&signed)];
        let writer = match self.receive(&mut stream, &anchor, &upload).await? {
            Received::Valid(writer, steps) => {
                results.extend(steps.iter().map(Step::from));
                writer
            }
            Received::Invalid(rejection) => {
                results.extend(rejection.results.iter().map(Step::from));
                return self
                    .decided(&upload, Err(rejection.reason.as_str()), &results, started)
                    .await;
            }
        };

        // Step 6: an active consent of the uploader covering the digest.
        let consent = {
            let mut conn = state.pool.acquire().await?;
            active_consent(&mut conn, &upload.record.contributor, &digest).await?
        };
        let Some(consent) = consent else {
            writer.abort().await.map_err(ServiceError::internal)?;
            results.push(no_consent(&upload));
            return self
                .decided(&upload, Err(NO_CONSENT), &results, started)
                .await;
        };
        results.push(Step::passed(
            "consent",
            format!("consent {}", consent.terms.consent),
        ));
        let existed = state
            .store
            .exists(&digest.0)
            .await
            .map_err(ServiceError::internal)?;
        let size = writer
            .commit(&digest.0)
            .await
            .map_err(ServiceError::internal)?;
        // From here the blob is stored; every way out that does not accept
        // deletes it again (unless another submission had stored it).
        let forget = || async {
            if !existed {
                let _ = state.store.delete(&digest.0).await;
            }
        };

        // Step 7: the quality gate, when the operator configured one.
        if let Some(gate) = &state.gate {
            let gate_started = std::time::Instant::now();
            let report = {
                let mut conn = state.pool.acquire().await?;
                gate.check(
                    &mut conn,
                    &state.store,
                    &anchor,
                    &consent.terms.purposes,
                    &digest.0,
                )
                .await
            };
            state.metrics.gate_seconds.observe(gate_started.elapsed());
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    forget().await;
                    return Err(e);
                }
            };
            results.extend(report.results.iter().map(Step::from));
            if let Some(reason) = report.rejection {
                forget().await;
                return self
                    .decided(&upload, Err(reason.as_str()), &results, started)
                    .await;
            }
        }

        let accepted = self.accept(&upload, anchor.digest, &results, size).await;
        match accepted {
            Ok(true) => self.decided(&upload, Ok(()), &[], started).await,
            Ok(false) => {
                // The consent ended while the upload was being checked.
                forget().await;
                results.push(no_consent(&upload));
                self.decided(&upload, Err(NO_CONSENT), &results, started)
                    .await
            }
            Err(e) => {
                forget().await;
                Err(e)
            }
        }
    }

    /// The submission answering a duplicate upload of an accepted expert;
    /// refuses a reused submission id.
    async fn existing(&self, upload: &Upload) -> ServiceResult<Option<String>> {
        let mut conn = self.0.pool.acquire().await?;
        let accepted: Option<String> = sqlx::query_scalar(
            r"SELECT submission_id FROM submissions
              WHERE contributor_id = $1 AND expert_digest = $2 AND state = 'accepted'",
        )
        .bind(upload.record.contributor.as_str())
        .bind(upload.manifest.total.0.0.as_slice())
        .fetch_optional(&mut *conn)
        .await?;
        if accepted.is_some() {
            return Ok(accepted);
        }
        // An expert's digest is its identity: the same weights accepted for
        // another contributor, or erased after a withdrawal, are not taken again.
        let known: Option<(String, Option<i64>)> = sqlx::query_as(
            r"SELECT contributor_id, erased_idx FROM experts WHERE expert_digest = $1",
        )
        .bind(upload.manifest.total.0.0.as_slice())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((owner, erased)) = known {
            let detail = match erased {
                Some(index) => format!(
                    "expert {} was erased (ledger entry {index}); its weights are not accepted again",
                    upload.manifest.total
                ),
                None => format!(
                    "expert {} is already accepted for {owner}",
                    upload.manifest.total
                ),
            };
            return Err(ServiceError::new(
                Code::AlreadyExists,
                "EXPERT_EXISTS",
                detail,
            ));
        }
        let taken: Option<String> =
            sqlx::query_scalar(r"SELECT submission_id FROM submissions WHERE submission_id = $1")
                .bind(upload.submission.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        match taken {
            Some(_) => Err(submission_exists(&upload.submission)),
            None => Ok(None),
        }
    }

    /// Streams the payload to the validator and a blob writer (steps 3-5).
    /// A malformed stream is refused (the blob aborted, nothing recorded).
    async fn receive(
        &self,
        stream: &mut Streaming<v1::UploadExpertRequest>,
        anchor: &Arc<crate::validate::AnchorReference>,
        upload: &Upload,
    ) -> ServiceResult<Received> {
        let state = &self.0;
        let mut validator = match UploadValidator::new(
            anchor.clone(),
            state.validation.clone(),
            upload.manifest.clone(),
            upload.size,
        ) {
            Ok(validator) => validator,
            Err(rejection) => return Ok(Received::Invalid(rejection)),
        };
        let mut writer = state.store.writer().await.map_err(ServiceError::internal)?;
        let mut early = None;
        loop {
            let chunk = match next_chunk(stream).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            state
                .metrics
                .upload_bytes
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if let Err(rejection) = validator.feed(&chunk) {
                early = Some(rejection);
                break;
            }
            if let Err(e) = writer.write(&chunk).await {
                let _ = writer.abort().await;
                return Err(ServiceError::internal(e));
            }
        }
        let outcome = match early {
            Some(rejection) => ValidationOutcome::Rejected(rejection),
            None => validator.finish(),
        };
        match outcome {
            ValidationOutcome::Accepted(expert) => {
                Ok(Received::Valid(Box::new(writer), expert.results))
            }
            ValidationOutcome::Rejected(rejection) => {
                writer.abort().await.map_err(ServiceError::internal)?;
                Ok(Received::Invalid(rejection))
            }
        }
    }

    /// Records a rejection (`Err(reason)`, with `results`) — an acceptance is
    /// already recorded — counts it, and answers the submission's status.
    async fn decided(
        &self,
        upload: &Upload,
        decision: Result<(), &str>,
        results: &[Step],
        started: std::time::Instant,
    ) -> ServiceResult<v1::SubmissionStatus> {
        let outcome = match decision {
            Ok(()) => "accepted".to_string(),
            Err(reason) => {
                self.reject(upload, reason, results).await?;
                reason.to_string()
            }
        };
        let metrics = &self.0.metrics;
        metrics.count_upload(&outcome);
        metrics.upload_seconds.observe(started.elapsed());
        self.answer(upload.submission.as_str()).await
    }

    async fn answer(&self, id: &str) -> ServiceResult<v1::SubmissionStatus> {
        let mut conn = self.0.pool.acquire().await?;
        self.status(&mut conn, id).await
    }

    /// Records an accepted upload, in one transaction with a fresh look at the
    /// consent (it may have ended during the upload: then nothing is written
    /// and the answer is `false`). Publishes, for each purpose the consent
    /// allows, the purpose's head plus this expert — unless publishing is
    /// batched.
    async fn accept(
        &self,
        upload: &Upload,
        anchor: Sha256Digest,
        results: &[Step],
        size: u64,
    ) -> ServiceResult<bool> {
        let state = &self.0;
        let digest = upload.manifest.total;
        // Consents past their expiry end first, so that the new version does
        // not carry an expert whose consent has lapsed.
        super::tasks::expire_due(state).await?;
        let mut tx = state.pool.begin().await?;
        let Some(consent) = active_consent(&mut tx, &upload.record.contributor, &digest).await?
        else {
            return Ok(false);
        };
        let mut ledger = LedgerTx::begin(state, tx).await?;
        let decided = self
            .record(
                &mut ledger,
                upload,
                Event::ExpertAccepted(ExpertAccepted {
                    submission: upload.submission.clone(),
                    expert: digest,
                    results: results.iter().map(Step::to_ledger).collect(),
                }),
                None,
                results,
            )
            .await?;
        records::insert_blob(ledger.conn(), &digest.0, size).await?;
        sqlx::query(
            r"INSERT INTO experts (expert_digest, submission_id, contributor_id, blob_sha256, accepted_idx)
              VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(digest.0.0.as_slice())
        .bind(upload.submission.as_str())
        .bind(upload.record.contributor.as_str())
        .bind(digest.0.0.as_slice())
        .bind(i64::try_from(decided).map_err(ServiceError::internal)?)
        .execute(ledger.conn())
        .await?;
        let mut published = Vec::new();
        if !state.batched_publishing {
            let listed = (
                VersionExpert {
                    submission: upload.submission.clone(),
                    expert: digest,
                    consent: consent.terms.consent.clone(),
                },
                upload.record.contributor.clone(),
            );
            for purpose in &consent.terms.purposes {
                published.push(
                    publish::publish_adding(
                        &mut ledger,
                        purpose,
                        anchor,
                        std::slice::from_ref(&listed),
                    )
                    .await?,
                );
            }
        }
        ledger.commit().await?;
        tracing::info!(submission = %upload.submission, expert = %digest, ?published, "expert accepted");
        Ok(true)
    }

    /// Appends the upload's `ExpertSubmitted` and its decision `decision`,
    /// and inserts the submission's rows; returns the decision's index.
    async fn record(
        &self,
        ledger: &mut LedgerTx<'_>,
        upload: &Upload,
        decision: Event,
        reason: Option<&str>,
        results: &[Step],
    ) -> ServiceResult<u64> {
        let submitted = ledger
            .append(SignedEvent {
                event: Event::ExpertSubmitted(ExpertSubmitted {
                    submission: upload.submission.clone(),
                    contributor: upload.record.contributor.clone(),
                    manifest: upload.manifest.clone(),
                }),
                contributor_signature: Some(upload.signature),
                invite_signature: None,
            })
            .await?;
        let decided = ledger.append(SignedEvent::coordinator(decision)).await?;
        insert_submission(
            ledger.conn(),
            upload,
            if reason.is_some() {
                "rejected"
            } else {
                "accepted"
            },
            reason,
            submitted.index(),
            decided.index(),
        )
        .await?;
        insert_results(ledger.conn(), &upload.submission, results).await?;
        Ok(decided.index())
    }

    /// Records a rejected upload: `ExpertSubmitted`, `ExpertRejected` and the rows.
    async fn reject(&self, upload: &Upload, reason: &str, results: &[Step]) -> ServiceResult<()> {
        let code = ReasonCode::new(reason).map_err(ServiceError::internal)?;
        let tx = self.0.pool.begin().await?;
        let mut ledger = LedgerTx::begin(&self.0, tx).await?;
        self.record(
            &mut ledger,
            upload,
            Event::ExpertRejected(ExpertRejected {
                submission: upload.submission.clone(),
                reason: code,
                results: results.iter().map(Step::to_ledger).collect(),
            }),
            Some(reason),
            results,
        )
        .await?;
        ledger.commit().await?;
        tracing::info!(submission = %upload.submission, reason, "expert rejected");
        Ok(())
    }
}

/// An upload's header, checked.
struct Upload {
    submission: SubmissionId,
    record: ContributorRecord,
    manifest: ExpertManifest,
    signature: Signature,
    /// Declared payload size.
    size: u64,
}

/// The streaming checks' outcome.
enum Received {
    /// Steps 3-5 passed; the payload is staged in the writer.
    Valid(Box<BlobWriter>, Vec<StepResult>),
    /// A check failed; the staged payload is gone.
    Invalid(Rejection),
}

/// Reads the first message, which must be the header.
async fn read_header(
    stream: &mut Streaming<v1::UploadExpertRequest>,
) -> ServiceResult<v1::UploadHeader> {
    let first = stream.message().await.map_err(stream_error)?;
    match first {
        Some(v1::UploadExpertRequest {
            message: Some(v1::upload_expert_request::Message::Header(header)),
        }) => Ok(header),
        _ => Err(ServiceError::invalid(
            "MALFORMED_REQUEST",
            "the first message must be the header",
        )),
    }
}

/// The next chunk's bytes; `None` at the end of the stream.
async fn next_chunk(
    stream: &mut Streaming<v1::UploadExpertRequest>,
) -> ServiceResult<Option<Vec<u8>>> {
    let message = stream.message().await.map_err(stream_error)?;
    match message {
        None => Ok(None),
        Some(v1::UploadExpertRequest {
            message: Some(v1::upload_expert_request::Message::Chunk(chunk)),
        }) => Ok(Some(chunk.data)),
        Some(_) => Err(ServiceError::invalid(
            "MALFORMED_REQUEST",
            "every message after the header must be a chunk",
        )),
    }
}

/// A stream that failed to decode: an oversized message (tonic's own
/// limit) or a malformed one.
fn stream_error(status: Status) -> ServiceError {
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => ServiceError::new(
            Code::OutOfRange,
            "MESSAGE_TOO_LARGE",
            status.message().to_string(),
        ),
        _ => ServiceError::invalid("MALFORMED_REQUEST", status.message().to_string()),
    }
}

fn submission_exists(submission: &SubmissionId) -> ServiceError {
    ServiceError::new(
        Code::AlreadyExists,
        "SUBMISSION_EXISTS",
        format!("submission {submission} already exists"),
    )
}

fn no_consent(upload: &Upload) -> Step {
    Step {
        check: "consent".into(),
        passed: false,
        figure: None,
        reason: Some(NO_CONSENT.into()),
        detail: format!(
            "no active consent of {} covers expert {}",
            upload.record.contributor, upload.manifest.total
        ),
    }
}

/// The reason code of an upload no active consent covers (DESIGN step 6).
const NO_CONSENT: &str = "NO_CONSENT";

/// One validation step as recorded (the validator's steps and the server's).
#[derive(Clone, Debug)]
struct Step {
    check: String,
    passed: bool,
    figure: Option<f64>,
    reason: Option<String>,
    detail: String,
}

impl From<&StepResult> for Step {
    fn from(r: &StepResult) -> Self {
        Self {
            check: r.check.to_string(),
            passed: r.passed,
            figure: r.figure,
            reason: r.reason.map(|c| c.as_str().to_string()),
            detail: r.detail.clone(),
        }
    }
}

impl Step {
    fn passed(check: &str, detail: String) -> Self {
        Self {
            check: check.to_string(),
            passed: true,
            figure: None,
            reason: None,
            detail,
        }
    }

    fn to_ledger(&self) -> ValidationResult {
        ValidationResult {
            check: self.check.clone(),
            passed: self.passed,
            figure: self.figure.and_then(Figure::from_f64),
        }
    }
}

/// An active, unexpired consent of `contributor` covering `digest`.
async fn active_consent(
    conn: &mut sqlx::PgConnection,
    contributor: &ContributorId,
    digest: &ExpertDigest,
) -> ServiceResult<Option<ConsentRow>> {
    let now = now();
    let found = rows::list_consents(conn, Some(contributor), Some(digest), None, 1000).await?;
    Ok(found
        .into_iter()
        .find(|c| c.state == ConsentState::Active && c.terms.expires_at.is_none_or(|e| now < e)))
}

async fn insert_submission(
    conn: &mut sqlx::PgConnection,
    upload: &Upload,
    state: &str,
    reason: Option<&str>,
    submitted: u64,
    decided: u64,
) -> ServiceResult<()> {
    let manifest = &upload.manifest;
    let json = serde_json::to_string(manifest).map_err(ServiceError::internal)?;
    let index = |i: u64| i64::try_from(i).map_err(ServiceError::internal);
    let inserted = sqlx::query(
        r"INSERT INTO submissions (submission_id, contributor_id, expert_digest, anchor_digest,
                                   manifest, payload_size, state, reason_code, submitted_idx, decided_idx)
          VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10)",
    )
    .bind(upload.submission.as_str())
    .bind(upload.record.contributor.as_str())
    .bind(manifest.total.0.0.as_slice())
    .bind(manifest.anchor.0.as_slice())
    .bind(json)
    .bind(i64::try_from(upload.size).map_err(ServiceError::internal)?)
    .bind(state)
    .bind(reason)
    .bind(index(submitted)?)
    .bind(index(decided)?)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        // Two uploads raced under one submission id: the later one loses.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(submission_exists(&upload.submission))
        }
        Err(e) => Err(e.into()),
    }
}

async fn insert_results(
    conn: &mut sqlx::PgConnection,
    submission: &SubmissionId,
    results: &[Step],
) -> ServiceResult<()> {
    for (n, r) in results.iter().enumerate() {
        sqlx::query(
            r"INSERT INTO validation_results (submission_id, step_no, step, passed, figure, reason_code, detail)
              VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(submission.as_str())
        .bind(i32::try_from(n + 1).map_err(ServiceError::internal)?)
        .bind(&r.check)
        .bind(r.passed)
        .bind(r.to_ledger().figure.map(String::from))
        .bind(r.reason.as_deref())
        .bind(&r.detail)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl SubmissionService for Submissions {
    async fn upload_expert(
        &self,
        request: Request<Streaming<v1::UploadExpertRequest>>,
    ) -> Result<Response<v1::SubmissionStatus>, Status> {
        Ok(Response::new(self.upload(request.into_inner()).await?))
    }

    async fn get_submission(
        &self,
        request: Request<v1::GetSubmissionRequest>,
    ) -> Result<Response<v1::SubmissionStatus>, Status> {
        let mut conn = self.0.pool.acquire().await.map_err(ServiceError::from)?;
        Ok(Response::new(
            self.status(&mut conn, &request.into_inner().submission_id)
                .await?,
        ))
    }

    async fn list_submissions(
        &self,
        request: Request<v1::ListSubmissionsRequest>,
    ) -> Result<Response<v1::ListSubmissionsResponse>, Status> {
        let request = request.into_inner();
        let state = &self.0;
        let before = page_token(request.page.as_ref().map_or("", |p| p.page_token.as_str()))?;
        let limit = page_size(state, request.page.as_ref());
        let mut tx = state.pool.begin().await.map_err(ServiceError::from)?;
        let caller = auth::authenticate(state, &mut tx, &request).await?;
        let owner = match &caller {
            auth::Caller::Operator => None,
            auth::Caller::Contributor(r) => Some(r.contributor.as_str().to_string()),
        };
        let rows: Vec<(String, i64)> = sqlx::query_as(
            r"SELECT submission_id, submitted_idx FROM submissions
              WHERE ($1::text IS NULL OR contributor_id = $1)
                AND ($2::bigint IS NULL OR submitted_idx < $2)
              ORDER BY submitted_idx DESC LIMIT $3",
        )
        .bind(owner)
        .bind(before.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *tx)
        .await
        .map_err(ServiceError::from)?;
        let more = rows.len() > limit as usize;
        let mut submissions = Vec::new();
        for (id, _) in rows.iter().take(limit as usize) {
            submissions.push(self.status(&mut tx, id).await?);
        }
        tx.commit().await.map_err(ServiceError::from)?;
        Ok(Response::new(v1::ListSubmissionsResponse {
            submissions,
            next_page_token: match (more, rows.get(limit as usize - 1)) {
                (true, Some((_, idx))) => idx.to_string(),
                _ => String::new(),
            },
        }))
    }
}
