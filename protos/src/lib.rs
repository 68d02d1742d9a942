//! The public gRPC API of Tributary, package `tributary.v1`.
//!
//! The `.proto` files under `proto/tributary/v1/` are the source of truth; this
//! crate holds the prost messages and the tonic clients and servers generated
//! from them at build time, plus the encoded file descriptor set a server
//! registers for gRPC reflection.
//!
//! Services (see each file for the messages):
//! - `ContributorService` (`contributors.proto`): invites and registration.
//! - `AnchorService` (`anchor.proto`): publishing and fetching the anchor.
//! - `ConsentService` (`consent.proto`): grant, list, withdraw.
//! - `SubmissionService` (`submissions.proto`): expert upload and validation status.
//! - `VersionService` (`versions.proto`): published versions and downloads.
//! - `LedgerService` (`ledger.proto`): checkpoints, entries, proofs, lookups.
//!
//! Mutating calls carry a [`v1::SignedRequest`]; [`REQUEST_SIGNATURE_DOMAIN`]
//! is the prefix of the bytes it signs.
//!
//! **Architecture Invariant:** only the coordinator's gRPC layer and the client
//! library see these types; storage, validation and the ledger use domain types.

/// Generated code for `tributary.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/tributary.v1.rs"));
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `tributary.v1`
/// file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tributary_v1_descriptor.bin"));

/// The domain-separation prefix of the bytes a [`v1::SignedRequest`] signs.
pub const REQUEST_SIGNATURE_DOMAIN: &[u8] = b"tributary/v1/request\n";

/// The protobuf package of this API version.
pub const PACKAGE: &str = "tributary.v1";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn descriptor_set_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == PACKAGE)
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        for service in [
            "ContributorService",
            "AnchorService",
            "ConsentService",
            "SubmissionService",
            "VersionService",
            "LedgerService",
        ] {
            assert!(services.iter().any(|s| s == service), "{service} missing");
        }
    }

    #[test]
    fn upload_header_round_trips() {
        let request = v1::UploadExpertRequest {
            message: Some(v1::upload_expert_request::Message::Header(
                v1::UploadHeader {
                    submission_id: "s-1".into(),
                    payload_size: 42,
                    ..Default::default()
                },
            )),
        };
        let bytes = request.encode_to_vec();
        let back = v1::UploadExpertRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, request);
    }
}
