//! `SubmissionService`: expert uploads and their validation status.
//!
//! Reading submissions works from the `submissions` and `validation_results`
//! tables. `UploadExpert` authenticates the header (signature, replay,
//! contributor, ownership; DESIGN step 1), verifies the manifest signature
//! (step 2), streams every chunk to the validator (steps 3-5) and a blob
//! writer in constant memory, checks an active consent covering the digest
//! (step 6), and records the decision in one `LedgerTx`: `ExpertSubmitted` +
//! `ExpertAccepted` with the rows and a new version per consented purpose
//! (the purpose's head plus this expert), or `ExpertSubmitted` +
//! `ExpertRejected` with the reason code (the blob aborted). The quality gate
//! (step 7) is not run on this path.

use std::sync::Arc;

use sqlx::Row as _;
use tonic::{Code, Request, Response, Status, Streaming};
use tributary_client::convert;
use tributary_protos::v1;
use tributary_protos::v1::submission_service_server::SubmissionService;

use tributary_ledger::event::{
    ExpertAccepted, ExpertManifest, ExpertRejected, ExpertSubmitted, Figure, ModelVersionPublished,
    ValidationResult, VersionExpert,
};
use tributary_ledger::{
    ContributorId, Event, ExpertDigest, ReasonCode, Signature, SignedEvent, SubmissionId,
    VersionNumber,
};

use super::versions::manifest_digest;
use super::writer::{LedgerTx, now, receipt_for};
use super::{AppState, ServiceError, ServiceResult, auth, page_size, page_token};
use crate::store::records::{self, ContributorRecord};
use crate::store::state::{self as rows, ConsentRow, ConsentState, VersionRow};
use crate::validate::{StepResult, UploadValidator, ValidationOutcome, verify_manifest_signature};

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
        let first = stream
            .message()
            .await
            .map_err(|s| ServiceError::invalid("MALFORMED_REQUEST", s.message().to_string()))?;
        let Some(v1::UploadExpertRequest {
            message: Some(v1::upload_expert_request::Message::Header(header)),
        }) = first
        else {
            return Err(ServiceError::invalid(
                "MALFORMED_REQUEST",
                "the first message must be the header",
            ));
        };
        let state = &self.0;
        let mut tx = state.pool.begin().await?;
        let caller = auth::authenticate(state, &mut tx, &header).await?;
        let record = caller.contributor()?.clone();
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

        // A duplicate of an accepted upload answers the existing submission.
        let existing: Option<String> = sqlx::query_scalar(
            r"SELECT submission_id FROM submissions
              WHERE contributor_id = $1 AND expert_digest = $2 AND state = 'accepted'",
        )
        .bind(record.contributor.as_str())
        .bind(digest.0.0.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = existing {
            tx.commit().await?;
            let mut conn = state.pool.acquire().await?;
            return self.status(&mut conn, &id).await;
        }
        let taken: Option<String> =
            sqlx::query_scalar(r"SELECT submission_id FROM submissions WHERE submission_id = $1")
                .bind(submission.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(ServiceError::new(
                Code::AlreadyExists,
                "SUBMISSION_EXISTS",
                format!("submission {submission} already exists"),
            ));
        }

        // Step 2: the manifest signature. Its entry could not be recorded (it
        // would carry a signature that does not verify), so it is refused.
        let signed = verify_manifest_signature(
            &submission,
            &record.contributor,
            &manifest,
            &signature,
            &record.public_key,
        );
        if !signed.passed {
            return Err(ServiceError::new(
                Code::PermissionDenied,
                "BAD_MANIFEST_SIGNATURE",
                signed.detail,
            ));
        }
        let anchor = state.current_anchor().ok_or_else(|| {
            ServiceError::new(
                Code::FailedPrecondition,
                "NO_ANCHOR",
                "the coordinator has no anchor configured (--anchor)",
            )
        })?;

        // Steps 3-5, streaming: every chunk goes to the validator and the blob writer.
        let mut results = vec![Step::from(&signed)];
        let outcome = match UploadValidator::new(
            anchor.clone(),
            state.validation.clone(),
            manifest.clone(),
            header.payload_size,
        ) {
            Err(rejection) => ValidationOutcome::Rejected(rejection),
            Ok(mut validator) => {
                let mut writer = state.store.writer().await.map_err(ServiceError::internal)?;
                let mut early = None;
                loop {
                    let message = match stream.message().await {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = writer.abort().await;
                            return Err(ServiceError::invalid(
                                "MALFORMED_REQUEST",
                                e.message().to_string(),
                            ));
                        }
                    };
                    let Some(message) = message else { break };
                    let Some(v1::upload_expert_request::Message::Chunk(chunk)) = message.message
                    else {
                        let _ = writer.abort().await;
                        return Err(ServiceError::invalid(
                            "MALFORMED_REQUEST",
                            "every message after the header must be a chunk",
                        ));
                    };
                    if let Err(rejection) = validator.feed(&chunk.data) {
                        early = Some(rejection);
                        break;
                    }
                    if let Err(e) = writer.write(&chunk.data).await {
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
                        // Step 6: an active consent of the uploader covering the digest.
                        results.extend(expert.results.iter().map(Step::from));
                        match active_consent(&mut tx, &record.contributor, &digest).await? {
                            Some(consent) => {
                                results.push(Step {
                                    check: "consent".into(),
                                    passed: true,
                                    figure: None,
                                    reason: None,
                                    detail: format!("consent {}", consent.terms.consent),
                                });
                                let existed = state
                                    .store
                                    .exists(&digest.0)
                                    .await
                                    .map_err(ServiceError::internal)?;
                                let size = writer
                                    .commit(&digest.0)
                                    .await
                                    .map_err(ServiceError::internal)?;
                                let accepted = self
                                    .accept(
                                        tx,
                                        &submission,
                                        &record,
                                        &manifest,
                                        signature,
                                        &results,
                                        &consent,
                                        size,
                                    )
                                    .await;
                                if let Err(e) = accepted {
                                    if !existed {
                                        let _ = state.store.delete(&digest.0).await;
                                    }
                                    return Err(e);
                                }
                                let mut conn = state.pool.acquire().await?;
                                return self.status(&mut conn, submission.as_str()).await;
                            }
                            None => {
                                let _ = writer.abort().await;
                                results.push(Step {
                                    check: "consent".into(),
                                    passed: false,
                                    figure: None,
                                    reason: Some(NO_CONSENT.into()),
                                    detail: format!(
                                        "no active consent of {} covers expert {digest}",
                                        record.contributor
                                    ),
                                });
                                self.reject(
                                    tx,
                                    &submission,
                                    &record,
                                    &manifest,
                                    signature,
                                    NO_CONSENT,
                                    &results,
                                    header.payload_size,
                                )
                                .await?;
                                let mut conn = state.pool.acquire().await?;
                                return self.status(&mut conn, submission.as_str()).await;
                            }
                        }
                    }
                    rejected => {
                        writer.abort().await.map_err(ServiceError::internal)?;
                        rejected
                    }
                }
            }
        };
        let ValidationOutcome::Rejected(rejection) = outcome else {
            return Err(ServiceError::internal(
                "an accepted upload was not recorded",
            ));
        };
        results.extend(rejection.results.iter().map(Step::from));
        self.reject(
            tx,
            &submission,
            &record,
            &manifest,
            signature,
            rejection.reason.as_str(),
            &results,
            header.payload_size,
        )
        .await?;
        let mut conn = state.pool.acquire().await?;
        self.status(&mut conn, submission.as_str()).await
    }

    /// Records an accepted upload and publishes, for each purpose its consent
    /// allows, a version of that purpose's head plus this expert.
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        submission: &SubmissionId,
        record: &ContributorRecord,
        manifest: &ExpertManifest,
        signature: Signature,
        results: &[Step],
        consent: &ConsentRow,
        size: u64,
    ) -> ServiceResult<()> {
        let state = &self.0;
        let digest = manifest.total;
        let mut ledger = LedgerTx::begin(state, tx).await?;
        let submitted = ledger
            .append(submitted_event(submission, record, manifest, signature))
            .await?;
        let decided = ledger
            .append(SignedEvent::coordinator(Event::ExpertAccepted(
                ExpertAccepted {
                    submission: submission.clone(),
                    expert: digest,
                    results: results.iter().map(Step::to_ledger).collect(),
                },
            )))
            .await?;
        insert_submission(
            ledger.conn(),
            submission,
            record,
            manifest,
            size,
            "accepted",
            None,
            submitted.index(),
            decided.index(),
        )
        .await?;
        insert_results(ledger.conn(), submission, results).await?;
        records::insert_blob(ledger.conn(), &digest.0, size).await?;
        sqlx::query(
            r"INSERT INTO experts (expert_digest, submission_id, contributor_id, blob_sha256, accepted_idx)
              VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(digest.0.0.as_slice())
        .bind(submission.as_str())
        .bind(record.contributor.as_str())
        .bind(digest.0.0.as_slice())
        .bind(i64::try_from(decided.index()).map_err(ServiceError::internal)?)
        .execute(ledger.conn())
        .await?;
        let anchor = state
            .current_anchor()
            .map(|a| a.digest)
            .ok_or_else(|| ServiceError::internal("no anchor"))?;
        let listed = VersionExpert {
            submission: submission.clone(),
            expert: digest,
            consent: consent.terms.consent.clone(),
        };
        let mut published = Vec::new();
        for purpose in &consent.terms.purposes {
            let head: Option<i64> = sqlx::query_scalar(
                r"SELECT v.version FROM versions v
                  WHERE v.purpose = $1 AND v.revoked_idx IS NULL
                    AND NOT EXISTS (SELECT 1 FROM versions c WHERE c.parent = v.version)
                  ORDER BY v.version DESC LIMIT 1",
            )
            .bind(purpose.as_str())
            .fetch_optional(ledger.conn())
            .await?;
            let parent = match head {
                Some(h) => {
                    rows::version(
                        ledger.conn(),
                        VersionNumber(u64::try_from(h).map_err(ServiceError::internal)?),
                    )
                    .await?
                }
                None => None,
            };
            let mut experts: Vec<(VersionExpert, ContributorId)> = parent
                .as_ref()
                .filter(|p| p.anchor == anchor)
                .map(|p| {
                    p.experts
                        .iter()
                        .filter(|(e, _)| e.expert != digest)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            experts.push((listed.clone(), record.contributor.clone()));
            let top_k = parent.as_ref().map_or(DEFAULT_TOP_K, |p| p.top_k);
            let number = rows::next_version(ledger.conn()).await?;
            let list: Vec<_> = experts.iter().map(|(e, _)| e.clone()).collect();
            let checkpoint = manifest_digest(&anchor, &list, top_k);
            let appended = ledger
                .append(SignedEvent::coordinator(Event::ModelVersionPublished(
                    ModelVersionPublished {
                        version: number,
                        parent: parent.as_ref().map(|p| p.version),
                        experts: list,
                        purpose: purpose.clone(),
                        top_k,
                        checkpoint,
                    },
                )))
                .await?;
            rows::insert_version(
                ledger.conn(),
                &VersionRow {
                    version: number,
                    parent: parent.as_ref().map(|p| p.version),
                    purpose: purpose.clone(),
                    top_k,
                    anchor,
                    checkpoint,
                    ledger_index: appended.index(),
                    published_unix_ms: 0,
                    revoked_index: None,
                    experts,
                },
            )
            .await?;
            published.push(number);
        }
        ledger.commit().await?;
        tracing::info!(%submission, expert = %digest, ?published, "expert accepted");
        Ok(())
    }

    /// Records a rejected upload: `ExpertSubmitted`, `ExpertRejected` and the rows.
    #[allow(clippy::too_many_arguments)]
    async fn reject(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        submission: &SubmissionId,
        record: &ContributorRecord,
        manifest: &ExpertManifest,
        signature: Signature,
        reason: &str,
        results: &[Step],
        size: u64,
    ) -> ServiceResult<()> {
        let code = ReasonCode::new(reason).map_err(ServiceError::internal)?;
        let mut ledger = LedgerTx::begin(&self.0, tx).await?;
        let submitted = ledger
            .append(submitted_event(submission, record, manifest, signature))
            .await?;
        let decided = ledger
            .append(SignedEvent::coordinator(Event::ExpertRejected(
                ExpertRejected {
                    submission: submission.clone(),
                    reason: code,
                    results: results.iter().map(Step::to_ledger).collect(),
                },
            )))
            .await?;
        insert_submission(
            ledger.conn(),
            submission,
            record,
            manifest,
            size,
            "rejected",
            Some(reason),
            submitted.index(),
            decided.index(),
        )
        .await?;
        insert_results(ledger.conn(), submission, results).await?;
        ledger.commit().await?;
        tracing::info!(%submission, reason, "expert rejected");
        Ok(())
    }
}

/// The reason code of an upload no active consent covers (DESIGN step 6).
const NO_CONSENT: &str = "NO_CONSENT";

/// Experts per token of a purpose's first version.
const DEFAULT_TOP_K: u32 = 2;

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
    fn to_ledger(&self) -> ValidationResult {
        ValidationResult {
            check: self.check.clone(),
            passed: self.passed,
            figure: self.figure.and_then(Figure::from_f64),
        }
    }
}

fn submitted_event(
    submission: &SubmissionId,
    record: &ContributorRecord,
    manifest: &ExpertManifest,
    signature: Signature,
) -> SignedEvent {
    SignedEvent {
        event: Event::ExpertSubmitted(ExpertSubmitted {
            submission: submission.clone(),
            contributor: record.contributor.clone(),
            manifest: manifest.clone(),
        }),
        contributor_signature: Some(signature),
        invite_signature: None,
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

#[allow(clippy::too_many_arguments)]
async fn insert_submission(
    conn: &mut sqlx::PgConnection,
    submission: &SubmissionId,
    record: &ContributorRecord,
    manifest: &ExpertManifest,
    size: u64,
    state: &str,
    reason: Option<&str>,
    submitted: u64,
    decided: u64,
) -> ServiceResult<()> {
    let json = serde_json::to_string(manifest).map_err(ServiceError::internal)?;
    let index = |i: u64| i64::try_from(i).map_err(ServiceError::internal);
    sqlx::query(
        r"INSERT INTO submissions (submission_id, contributor_id, expert_digest, anchor_digest,
                                   manifest, payload_size, state, reason_code, submitted_idx, decided_idx)
          VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10)",
    )
    .bind(submission.as_str())
    .bind(record.contributor.as_str())
    .bind(manifest.total.0.0.as_slice())
    .bind(manifest.anchor.0.as_slice())
    .bind(json)
    .bind(i64::try_from(size).map_err(ServiceError::internal)?)
    .bind(state)
    .bind(reason)
    .bind(index(submitted)?)
    .bind(index(decided)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
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
