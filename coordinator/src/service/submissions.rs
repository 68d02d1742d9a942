//! `SubmissionService`: expert uploads and their validation status.
//!
//! Reading submissions works from the `submissions` and `validation_results`
//! tables. `UploadExpert` authenticates the header (signature, replay,
//! contributor, ownership) and then needs the streaming validator and blob
//! store, which are not wired into this build yet: it answers
//! `UNIMPLEMENTED` with reason `NOT_IMPLEMENTED`.

use std::sync::Arc;

use sqlx::Row as _;
use tonic::{Code, Request, Response, Status, Streaming};
use tributary_client::convert;
use tributary_protos::v1;
use tributary_protos::v1::submission_service_server::SubmissionService;

use super::writer::receipt_for;
use super::{AppState, ServiceError, ServiceResult, auth, page_size, page_token};

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
        let mut tx = self.0.pool.begin().await?;
        let caller = auth::authenticate(&self.0, &mut tx, &header).await?;
        let record = caller.contributor()?;
        if record.contributor.as_str() != header.contributor_id {
            return Err(ServiceError::not_owner(
                "the upload names another contributor",
            ));
        }
        Err(ServiceError::new(
            Code::Unimplemented,
            "NOT_IMPLEMENTED",
            "expert validation is not wired into this build yet; the upload was not stored",
        ))
    }
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
