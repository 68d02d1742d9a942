//! `AnchorService`: the published anchor. Reading its description works from
//! the `anchors` table; publishing and fetching its files go through the blob
//! store, which is not wired into this build yet (they answer
//! `UNIMPLEMENTED` after authenticating the caller).

use std::sync::Arc;

use sqlx::Row as _;
use tonic::{Code, Request, Response, Status, Streaming};
use tributary_client::convert;
use tributary_protos::v1;
use tributary_protos::v1::anchor_service_server::AnchorService;

use super::{AppState, ServiceError, ServiceResult, auth};

/// The service.
#[derive(Debug, Clone)]
pub struct Anchors(pub Arc<AppState>);

#[derive(serde::Deserialize)]
struct StoredFile {
    name: String,
    size: u64,
    sha256: String,
}

impl Anchors {
    async fn get(&self, request: v1::GetAnchorRequest) -> ServiceResult<v1::AnchorInfo> {
        let digest = request
            .digest
            .as_ref()
            .map(|d| convert::digest("digest", Some(d)))
            .transpose()?;
        let row = sqlx::query(
            r"SELECT digest, files, (extract(epoch FROM published_at) * 1000)::bigint AS ms, is_current
              FROM anchors WHERE ($1::bytea IS NULL AND is_current) OR digest = $1",
        )
        .bind(digest.map(|d| d.0.to_vec()))
        .fetch_optional(&self.0.pool)
        .await?
        .ok_or_else(|| ServiceError::not_found("NO_ANCHOR", "no such anchor is published"))?;
        let files: sqlx::types::Json<Vec<StoredFile>> = row.try_get("files")?;
        let digest: Vec<u8> = row.try_get("digest")?;
        Ok(v1::AnchorInfo {
            digest: Some(v1::Digest { sha256: digest }),
            files: files
                .0
                .into_iter()
                .map(|f| v1::AnchorFile {
                    name: f.name,
                    size: f.size,
                    sha256: hex::decode(&f.sha256)
                        .ok()
                        .map(|sha256| v1::Digest { sha256 }),
                })
                .collect(),
            published_unix_ms: row.try_get("ms")?,
            current: row.try_get("is_current")?,
        })
    }

    async fn publish(
        &self,
        mut stream: Streaming<v1::PublishAnchorRequest>,
    ) -> ServiceResult<v1::AnchorInfo> {
        let first = stream
            .message()
            .await
            .map_err(|s| ServiceError::invalid("MALFORMED_REQUEST", s.message().to_string()))?;
        let Some(v1::PublishAnchorRequest {
            message: Some(v1::publish_anchor_request::Message::Header(header)),
        }) = first
        else {
            return Err(ServiceError::invalid(
                "MALFORMED_REQUEST",
                "the first message must be the header",
            ));
        };
        let mut tx = self.0.pool.begin().await?;
        auth::authenticate(&self.0, &mut tx, &header)
            .await?
            .operator()?;
        Err(ServiceError::new(
            Code::Unimplemented,
            "NOT_IMPLEMENTED",
            "anchor publishing stores files in the blob store, which is not wired into this build yet",
        ))
    }
}

type FetchStream = tokio_stream::wrappers::ReceiverStream<Result<v1::FetchAnchorResponse, Status>>;

#[tonic::async_trait]
impl AnchorService for Anchors {
    async fn publish_anchor(
        &self,
        request: Request<Streaming<v1::PublishAnchorRequest>>,
    ) -> Result<Response<v1::AnchorInfo>, Status> {
        Ok(Response::new(self.publish(request.into_inner()).await?))
    }

    async fn get_anchor(
        &self,
        request: Request<v1::GetAnchorRequest>,
    ) -> Result<Response<v1::AnchorInfo>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    type FetchAnchorStream = FetchStream;

    async fn fetch_anchor(
        &self,
        request: Request<v1::GetAnchorRequest>,
    ) -> Result<Response<Self::FetchAnchorStream>, Status> {
        self.get(request.into_inner()).await?;
        Err(ServiceError::new(
            Code::Unimplemented,
            "NOT_IMPLEMENTED",
            "anchor files stream from the blob store, which is not wired into this build yet",
        )
        .into())
    }
}
