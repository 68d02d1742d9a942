//! [`Client`]: the typed client of every `tributary.v1` service. It signs
//! mutating calls with its [`RequestSigner`], signs ledger statements with the
//! same key, streams uploads and downloads from and to files, and verifies
//! receipts.

use std::path::Path;

use tonic::transport::{Channel, Endpoint};
use tributary_ledger::event::{
    ConsentGranted, ConsentWithdrawn, ContributorRegistered, ExpertManifest, ExpertSubmitted,
};
use tributary_ledger::{
    ConsentId, ContributorId, Entry, Event, ExpertDigest, NoteVerifier, PublicKey, Sha256Digest,
    Signature, SignatureRole, SubmissionId, Timestamp, entry::statement_message,
};
use tributary_protos::v1;
use tributary_protos::v1::anchor_service_client::AnchorServiceClient;
use tributary_protos::v1::consent_service_client::ConsentServiceClient;
use tributary_protos::v1::contributor_service_client::ContributorServiceClient;
use tributary_protos::v1::ledger_service_client::LedgerServiceClient;
use tributary_protos::v1::submission_service_client::SubmissionServiceClient;
use tributary_protos::v1::version_service_client::VersionServiceClient;

use crate::convert;
use crate::error::ClientError;
use crate::files::{self, DownloadedFile, Part};
use crate::signing::{RequestSigner, SignedMessage};
use crate::tls::ClientTls;

/// Bytes per upload chunk.
pub const UPLOAD_CHUNK: usize = 256 * 1024;

/// Largest message the client accepts from the server.
pub const MAX_DECODING_MESSAGE: usize = 16 * 1024 * 1024;

/// A connection to a coordinator, with an optional identity to sign with.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    signer: Option<RequestSigner>,
}

impl Client {
    /// Connects to `url` (`https://host:port`, or `http://` for a plaintext
    /// server started with `--insecure-plaintext`).
    pub async fn connect(url: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.load()?)?;
        }
        let channel = endpoint.connect().await?;
        Ok(Self {
            channel,
            signer: None,
        })
    }

    /// The same connection, signing as `signer`.
    pub fn with_signer(&self, signer: RequestSigner) -> Self {
        Self {
            channel: self.channel.clone(),
            signer: Some(signer),
        }
    }

    /// The signer, if any.
    pub fn signer(&self) -> Option<&RequestSigner> {
        self.signer.as_ref()
    }

    fn signed<M: SignedMessage>(&self, mut message: M) -> Result<M, ClientError> {
        self.signer
            .as_ref()
            .ok_or(ClientError::NoSigner)?
            .sign(&mut message)?;
        Ok(message)
    }

    /// The raw contributor service client (for calls this type does not wrap).
    pub fn contributors(&self) -> ContributorServiceClient<Channel> {
        ContributorServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }
    /// The raw consent service client.
    pub fn consents(&self) -> ConsentServiceClient<Channel> {
        ConsentServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }
    /// The raw submission service client.
    pub fn submissions(&self) -> SubmissionServiceClient<Channel> {
        SubmissionServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }
    /// The raw version service client.
    pub fn versions(&self) -> VersionServiceClient<Channel> {
        VersionServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }
    /// The raw ledger service client.
    pub fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }
    /// The raw anchor service client.
    pub fn anchors(&self) -> AnchorServiceClient<Channel> {
        AnchorServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE)
    }

    /// Operator: issues an invite for a contributor's key; returns the invite signature.
    pub async fn create_invite(
        &self,
        contributor: &ContributorId,
        organisation: &str,
        public_key: &PublicKey,
    ) -> Result<Signature, ClientError> {
        let request = self.signed(v1::CreateInviteRequest {
            auth: None,
            contributor_id: contributor.as_str().to_string(),
            organisation: organisation.to_string(),
            public_key: public_key.0.to_vec(),
        })?;
        let response = self
            .contributors()
            .create_invite(request)
            .await?
            .into_inner();
        Ok(convert::signature("invite", response.invite.as_ref())?)
    }

    /// Contributor: registers with an invite, signing as the signer's key id
    /// with the signer's key.
    pub async fn register(
        &self,
        organisation: &str,
        invite: &Signature,
    ) -> Result<v1::RegisterResponse, ClientError> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoSigner)?;
        let contributor = convert::contributor_id("contributor_id", signer.key_id())?;
        let public_key = PublicKey::of(signer.signing_key());
        let event = Event::ContributorRegistered(ContributorRegistered {
            contributor: contributor.clone(),
            organisation: organisation.to_string(),
            public_key,
        });
        let statement = self.statement(&event)?;
        let request = self.signed(v1::RegisterRequest {
            auth: None,
            contributor_id: contributor.as_str().to_string(),
            organisation: organisation.to_string(),
            public_key: public_key.0.to_vec(),
            invite: Some(convert::signature_to_proto(invite)),
            contributor_signature: Some(convert::signature_to_proto(&statement)),
        })?;
        Ok(self.contributors().register(request).await?.into_inner())
    }

    /// The signer's statement signature over `event` (role contributor).
    pub fn statement(&self, event: &Event) -> Result<Signature, ClientError> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoSigner)?;
        let message = statement_message(event, SignatureRole::Contributor)?;
        Ok(Signature::sign(signer.signing_key(), &message))
    }

    /// Contributor: grants a consent.
    pub async fn grant_consent(
        &self,
        terms: ConsentGranted,
    ) -> Result<v1::ConsentResponse, ClientError> {
        let wire = convert::consent_to_proto(&terms);
        let statement = self.statement(&Event::ConsentGranted(terms))?;
        let request = self.signed(v1::GrantConsentRequest {
            auth: None,
            terms: Some(wire),
            signature: Some(convert::signature_to_proto(&statement)),
        })?;
        Ok(self.consents().grant_consent(request).await?.into_inner())
    }

    /// The caller's consents (first page of up to `page_size`).
    pub async fn list_consents(&self, page_size: u32) -> Result<Vec<v1::Consent>, ClientError> {
        let request = self.signed(v1::ListConsentsRequest {
            auth: None,
            expert: None,
            page: Some(v1::PageRequest {
                page_size,
                page_token: String::new(),
            }),
        })?;
        Ok(self
            .consents()
            .list_consents(request)
            .await?
            .into_inner()
            .consents)
    }

    /// Contributor: withdraws a consent now.
    pub async fn withdraw_consent(
        &self,
        consent: &ConsentId,
    ) -> Result<v1::WithdrawConsentResponse, ClientError> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoSigner)?;
        let contributor = convert::contributor_id("contributor_id", signer.key_id())?;
        let now = u64::try_from(crate::signing::now_unix_ms() / 1000).unwrap_or(0);
        let event = Event::ConsentWithdrawn(ConsentWithdrawn {
            consent: consent.clone(),
            contributor,
            withdrawn_at: Timestamp(now),
        });
        let statement = self.statement(&event)?;
        let request = self.signed(v1::WithdrawConsentRequest {
            auth: None,
            consent_id: consent.as_str().to_string(),
            withdrawn_at_unix: i64::try_from(now).unwrap_or(i64::MAX),
            signature: Some(convert::signature_to_proto(&statement)),
        })?;
        Ok(self
            .consents()
            .withdraw_consent(request)
            .await?
            .into_inner())
    }

    /// Contributor: uploads `payload` (an `expert.safetensors`) under `manifest`
    /// as submission `submission`: a signed header, then chunks.
    pub async fn upload_expert(
        &self,
        submission: &SubmissionId,
        manifest: &ExpertManifest,
        payload: &Path,
    ) -> Result<v1::SubmissionStatus, ClientError> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoSigner)?;
        let contributor = convert::contributor_id("contributor_id", signer.key_id())?;
        let event = Event::ExpertSubmitted(ExpertSubmitted {
            submission: submission.clone(),
            contributor: contributor.clone(),
            manifest: manifest.clone(),
        });
        let statement = self.statement(&event)?;
        let payload_size = tokio::fs::metadata(payload).await?.len();
        let header = self.signed(v1::UploadHeader {
            auth: None,
            submission_id: submission.as_str().to_string(),
            contributor_id: contributor.as_str().to_string(),
            manifest: Some(convert::manifest_to_proto(manifest)),
            manifest_signature: Some(convert::signature_to_proto(&statement)),
            payload_size,
        })?;
        let first = v1::UploadExpertRequest {
            message: Some(v1::upload_expert_request::Message::Header(header)),
        };
        let (requests, sender) =
            files::spawn_sender(first, vec![payload.to_path_buf()], UPLOAD_CHUNK, |c| {
                v1::UploadExpertRequest {
                    message: Some(v1::upload_expert_request::Message::Chunk(c)),
                }
            });
        let answer = self.submissions().upload_expert(requests).await;
        files::finish_sending(answer, sender).await
    }

    /// A submission's status.
    pub async fn get_submission(&self, id: &str) -> Result<v1::SubmissionStatus, ClientError> {
        let request = v1::GetSubmissionRequest {
            submission_id: id.to_string(),
        };
        Ok(self
            .submissions()
            .get_submission(request)
            .await?
            .into_inner())
    }

    /// Versions, newest first, optionally only for one purpose.
    pub async fn list_versions(
        &self,
        purpose: &str,
        include_revoked: bool,
    ) -> Result<Vec<v1::ModelVersion>, ClientError> {
        let request = v1::ListVersionsRequest {
            purpose: purpose.to_string(),
            include_revoked,
            page: None,
        };
        Ok(self
            .versions()
            .list_versions(request)
            .await?
            .into_inner()
            .versions)
    }

    /// One version.
    pub async fn get_version(&self, version: u64) -> Result<v1::ModelVersion, ClientError> {
        let request = v1::GetVersionRequest { version };
        Ok(self.versions().get_version(request).await?.into_inner())
    }

    /// Downloads a version's checkpoint into `dir` (`config.json`,
    /// `model.safetensors`, the anchor's tokenizer files), checking each
    /// file's size and SHA-256 against its header before renaming it into place.
    pub async fn download_version(
        &self,
        version: u64,
        dir: &Path,
    ) -> Result<Vec<DownloadedFile>, ClientError> {
        use v1::download_version_response::Message;
        let mut stream = self
            .versions()
            .download_version(v1::DownloadVersionRequest { version })
            .await?
            .into_inner();
        files::receive(&mut stream, dir, |m| match m.message? {
            Message::File(f) => Some(Part::File {
                name: f.name,
                size: f.size,
                sha256: f.sha256,
            }),
            Message::Chunk(c) => Some(Part::Chunk(c.data)),
        })
        .await
    }

    /// Operator: publishes the anchor checkpoint in `dir` (every regular file
    /// of it; `config.json`, `model.safetensors` and `tokenizer.json` at
    /// least), making it current if `make_current`.
    pub async fn publish_anchor(
        &self,
        dir: &Path,
        make_current: bool,
    ) -> Result<v1::AnchorInfo, ClientError> {
        let listed = files::list_dir(dir).await?;
        let header = self.signed(v1::PublishAnchorHeader {
            auth: None,
            files: listed
                .iter()
                .map(|f| v1::AnchorFile {
                    name: f.name.clone(),
                    size: f.size,
                    sha256: Some(v1::Digest {
                        sha256: f.sha256.to_vec(),
                    }),
                })
                .collect(),
            make_current,
        })?;
        let first = v1::PublishAnchorRequest {
            message: Some(v1::publish_anchor_request::Message::Header(header)),
        };
        let paths = listed.into_iter().map(|f| f.path).collect();
        let (requests, sender) =
            files::spawn_sender(first, paths, UPLOAD_CHUNK, |c| v1::PublishAnchorRequest {
                message: Some(v1::publish_anchor_request::Message::Chunk(c)),
            });
        let answer = self.anchors().publish_anchor(requests).await;
        files::finish_sending(answer, sender).await
    }

    /// Downloads the files of the current anchor (or of the one with
    /// `digest`) into `dir`, each checked against its size and SHA-256 and
    /// renamed into place; with a `digest`, also checks that the
    /// `model.safetensors` received hashes to it.
    pub async fn fetch_anchor(
        &self,
        digest: Option<&Sha256Digest>,
        dir: &Path,
    ) -> Result<Vec<DownloadedFile>, ClientError> {
        use v1::fetch_anchor_response::Message;
        let request = v1::GetAnchorRequest {
            digest: digest.map(convert::digest_to_proto),
        };
        let mut stream = self.anchors().fetch_anchor(request).await?.into_inner();
        let received = files::receive(&mut stream, dir, |m| match m.message? {
            Message::File(f) => Some(Part::File {
                name: f.name,
                size: f.size,
                sha256: f.sha256,
            }),
            Message::Chunk(c) => Some(Part::Chunk(c.data)),
        })
        .await?;
        let model = received
            .iter()
            .find(|f| f.path.file_name().is_some_and(|n| n == "model.safetensors"));
        match (digest, model) {
            (_, None) => Err(ClientError::Protocol(
                "the anchor has no model.safetensors".into(),
            )),
            (Some(d), Some(m)) if m.sha256 != d.0 => Err(ClientError::Protocol(format!(
                "the anchor's model.safetensors does not hash to {d}"
            ))),
            _ => Ok(received),
        }
    }

    /// The latest signed checkpoint.
    pub async fn checkpoint(&self) -> Result<v1::SignedCheckpoint, ClientError> {
        Ok(self
            .ledger()
            .get_checkpoint(v1::GetCheckpointRequest {})
            .await?
            .into_inner())
    }

    /// Entries in `[start, end)` (the server caps the count).
    pub async fn entries(&self, start: u64, end: u64) -> Result<Vec<v1::LedgerEntry>, ClientError> {
        Ok(self
            .ledger()
            .get_entries(v1::GetEntriesRequest { start, end })
            .await?
            .into_inner()
            .entries)
    }

    /// Indices of the entries about a contributor.
    pub async fn lookup_contributor(&self, id: &ContributorId) -> Result<Vec<u64>, ClientError> {
        let request = v1::LookupRequest {
            key: Some(v1::lookup_request::Key::ContributorId(
                id.as_str().to_string(),
            )),
        };
        Ok(self.ledger().lookup(request).await?.into_inner().indices)
    }

    /// Indices of the entries about an expert (consents, submissions,
    /// decisions, versions listing it, its erasure).
    pub async fn lookup_expert(&self, expert: &ExpertDigest) -> Result<Vec<u64>, ClientError> {
        let request = v1::LookupRequest {
            key: Some(v1::lookup_request::Key::Expert(convert::digest_to_proto(
                &expert.0,
            ))),
        };
        Ok(self.ledger().lookup(request).await?.into_inner().indices)
    }
}

/// Verifies a receipt against the operator's checkpoint key(s); returns its entry.
pub fn verify_receipt(
    receipt: Option<&v1::Receipt>,
    verifiers: &[NoteVerifier],
) -> Result<Entry, ClientError> {
    let receipt = receipt.ok_or_else(|| ClientError::Protocol("no receipt".into()))?;
    let (entry, _) = convert::receipt_from_proto(receipt)?.verify(verifiers)?;
    Ok(entry)
}
