//! The `SignedRequest` envelope of `common.proto`: the canonical bytes a caller
//! signs, signing them, and verifying them (the coordinator calls
//! [`verify_request`], so client and server share one definition).
//!
//! The bytes are, integers big-endian:
//! `"tributary/v1/request\n" ‖ method ‖ "\n" ‖ key_id ‖ "\n" ‖ timestamp_unix_ms (8)
//! ‖ len(nonce) (1) ‖ nonce ‖ SHA-256(payload)`, where `payload` is the protobuf
//! encoding of the request message with `auth` unset (for an upload, the
//! `UploadHeader` with `auth` unset). prost encodes fields in field-number
//! order and a decoded message keeps no unknown fields, so the server
//! re-encodes exactly what the client signed.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message;
use sha2::{Digest as _, Sha256};
use tributary_protos::REQUEST_SIGNATURE_DOMAIN;
use tributary_protos::v1;

/// The `key_id` of the operator's key.
pub const OPERATOR_KEY_ID: &str = "operator";
/// Shortest nonce accepted.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 64;
/// Length of the nonces this library draws.
pub const NONCE_LEN: usize = 16;

/// Why a signed request was refused. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no `auth` field.
    #[error("the request is not signed")]
    Missing,
    /// The nonce is shorter than 16 or longer than 64 bytes.
    #[error("the nonce must be 16 to 64 bytes, got {0}")]
    BadNonce(usize),
    /// The signature is malformed or does not verify under the caller's key.
    #[error("the request signature does not verify")]
    BadSignature,
    /// The timestamp is outside the accepted window.
    #[error(
        "the request was signed {skew_ms} ms away from the server's clock, outside the {window_ms} ms window"
    )]
    Stale {
        /// Signed time minus server time.
        skew_ms: i64,
        /// The window.
        window_ms: i64,
    },
}

impl AuthError {
    /// The stable reason code sent to callers.
    pub fn reason_code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MISSING_REQUEST_SIGNATURE",
            AuthError::BadNonce(_) => "BAD_NONCE",
            AuthError::BadSignature => "BAD_REQUEST_SIGNATURE",
            AuthError::Stale { .. } => "STALE_TIMESTAMP",
        }
    }
}

/// A request message that carries a `SignedRequest` in its `auth` field.
pub trait SignedMessage: Message + Clone + Default {
    /// The full gRPC method path the message is sent to.
    const METHOD: &'static str;
    /// The `auth` field.
    fn auth(&self) -> Option<&v1::SignedRequest>;
    /// Sets the `auth` field.
    fn set_auth(&mut self, auth: Option<v1::SignedRequest>);
}

macro_rules! signed_message {
    ($($ty:ident => $method:literal),* $(,)?) => {$(
        impl SignedMessage for v1::$ty {
            const METHOD: &'static str = $method;
            fn auth(&self) -> Option<&v1::SignedRequest> {
                self.auth.as_ref()
            }
            fn set_auth(&mut self, auth: Option<v1::SignedRequest>) {
                self.auth = auth;
            }
        }
    )*};
}

signed_message! {
    CreateInviteRequest => "/tributary.v1.ContributorService/CreateInvite",
    RegisterRequest => "/tributary.v1.ContributorService/Register",
    GrantConsentRequest => "/tributary.v1.ConsentService/GrantConsent",
    ListConsentsRequest => "/tributary.v1.ConsentService/ListConsents",
    WithdrawConsentRequest => "/tributary.v1.ConsentService/WithdrawConsent",
    ListSubmissionsRequest => "/tributary.v1.SubmissionService/ListSubmissions",
    UploadHeader => "/tributary.v1.SubmissionService/UploadExpert",
    PublishAnchorHeader => "/tributary.v1.AnchorService/PublishAnchor",
}

/// The SHA-256 of a message's encoding with `auth` unset.
pub fn payload_digest<M: SignedMessage>(message: &M) -> [u8; 32] {
    let mut bare = message.clone();
    bare.set_auth(None);
    Sha256::digest(bare.encode_to_vec()).into()
}

/// The canonical bytes a `SignedRequest` signs.
pub fn signing_bytes(
    method: &str,
    key_id: &str,
    timestamp_unix_ms: i64,
    nonce: &[u8],
    payload_sha256: &[u8; 32],
) -> Result<Vec<u8>, AuthError> {
    if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        return Err(AuthError::BadNonce(nonce.len()));
    }
    let mut out = Vec::with_capacity(
        REQUEST_SIGNATURE_DOMAIN.len() + method.len() + key_id.len() + 2 + 8 + 1 + 64 + 32,
    );
    out.extend_from_slice(REQUEST_SIGNATURE_DOMAIN);
    out.extend_from_slice(method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(key_id.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&timestamp_unix_ms.to_be_bytes());
    // The range check above makes the length fit one byte.
    out.push(nonce.len() as u8);
    out.extend_from_slice(nonce);
    out.extend_from_slice(payload_sha256);
    Ok(out)
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A caller's identity: the `key_id` it signs as and its Ed25519 key.
#[derive(Clone)]
pub struct RequestSigner {
    key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl RequestSigner {
    /// A signer for `key_id` (a contributor id, or [`OPERATOR_KEY_ID`]).
    pub fn new(key_id: impl Into<String>, key: SigningKey) -> Self {
        Self {
            key_id: key_id.into(),
            key,
        }
    }

    /// The operator's signer.
    pub fn operator(key: SigningKey) -> Self {
        Self::new(OPERATOR_KEY_ID, key)
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signing key (for statement signatures).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `message` now with a fresh random nonce and sets its `auth`.
    pub fn sign<M: SignedMessage>(&self, message: &mut M) -> Result<(), AuthError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.sign_with(message, now_unix_ms(), &nonce)
    }

    /// Signs `message` with a given time and nonce (tests of the server's checks).
    pub fn sign_with<M: SignedMessage>(
        &self,
        message: &mut M,
        timestamp_unix_ms: i64,
        nonce: &[u8],
    ) -> Result<(), AuthError> {
        let digest = payload_digest(message);
        let bytes = signing_bytes(M::METHOD, &self.key_id, timestamp_unix_ms, nonce, &digest)?;
        let signature = self.key.sign(&bytes);
        message.set_auth(Some(v1::SignedRequest {
            key_id: self.key_id.clone(),
            timestamp_unix_ms,
            nonce: nonce.to_vec(),
            signature: signature.to_bytes().to_vec(),
        }));
        Ok(())
    }
}

/// A verified request's identity: who signed and with which nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRequest {
    /// The key id that signed.
    pub key_id: String,
    /// The nonce, to record against replays.
    pub nonce: Vec<u8>,
    /// The signed time.
    pub timestamp_unix_ms: i64,
}

/// The `auth` of `message` without checking it: who claims to sign (the
/// server looks up the key of this id, then calls [`verify_request`]).
pub fn claimed_key_id<M: SignedMessage>(message: &M) -> Result<&str, AuthError> {
    message
        .auth()
        .map(|a| a.key_id.as_str())
        .ok_or(AuthError::Missing)
}

/// Verifies `message`'s `auth` under `key` with `verify_strict`, and that its
/// timestamp is within `window_ms` of `now_ms`. The caller still has to check
/// the nonce against replays.
pub fn verify_request<M: SignedMessage>(
    message: &M,
    key: &VerifyingKey,
    now_ms: i64,
    window_ms: i64,
) -> Result<VerifiedRequest, AuthError> {
    let auth = message.auth().ok_or(AuthError::Missing)?;
    let digest = payload_digest(message);
    let bytes = signing_bytes(
        M::METHOD,
        &auth.key_id,
        auth.timestamp_unix_ms,
        &auth.nonce,
        &digest,
    )?;
    let signature = Signature::from_slice(&auth.signature).map_err(|_| AuthError::BadSignature)?;
    key.verify_strict(&bytes, &signature)
        .map_err(|_| AuthError::BadSignature)?;
    let skew_ms = auth.timestamp_unix_ms.saturating_sub(now_ms);
    if skew_ms.saturating_abs() > window_ms {
        return Err(AuthError::Stale { skew_ms, window_ms });
    }
    Ok(VerifiedRequest {
        key_id: auth.key_id.clone(),
        nonce: auth.nonce.clone(),
        timestamp_unix_ms: auth.timestamp_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request() -> v1::WithdrawConsentRequest {
        v1::WithdrawConsentRequest {
            consent_id: "c-1".into(),
            withdrawn_at_unix: 7,
            ..Default::default()
        }
    }

    #[test]
    fn signed_requests_verify_and_tampering_is_caught() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signer = RequestSigner::new("alice", key.clone());
        let mut message = request();
        signer.sign(&mut message).unwrap();
        let now = now_unix_ms();
        let verified = verify_request(&message, &key.verifying_key(), now, 60_000).unwrap();
        assert_eq!(verified.key_id, "alice");
        assert_eq!(verified.nonce.len(), NONCE_LEN);

        let mut changed = message.clone();
        changed.consent_id = "c-2".into();
        assert_eq!(
            verify_request(&changed, &key.verifying_key(), now, 60_000),
            Err(AuthError::BadSignature)
        );
        let mut other_key_id = message.clone();
        if let Some(auth) = other_key_id.auth.as_mut() {
            auth.key_id = "bob".into();
        }
        assert_eq!(
            verify_request(&other_key_id, &key.verifying_key(), now, 60_000),
            Err(AuthError::BadSignature)
        );
        let stranger = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            verify_request(&message, &stranger.verifying_key(), now, 60_000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_request(&request(), &key.verifying_key(), now, 60_000),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn stale_timestamps_and_bad_nonces_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signer = RequestSigner::new("alice", key.clone());
        let mut message = request();
        signer.sign_with(&mut message, 1_000_000, &[1; 16]).unwrap();
        let error =
            verify_request(&message, &key.verifying_key(), 1_000_000 + 60_001, 60_000).unwrap_err();
        assert_eq!(error.reason_code(), "STALE_TIMESTAMP");
        assert!(verify_request(&message, &key.verifying_key(), 1_000_000 - 60_000, 60_000).is_ok());
        assert_eq!(
            signer.sign_with(&mut message, 0, &[1; 15]),
            Err(AuthError::BadNonce(15))
        );
        assert_eq!(
            signer.sign_with(&mut message, 0, &[1; 65]),
            Err(AuthError::BadNonce(65))
        );
    }

    #[test]
    fn signing_bytes_follow_the_proto_layout() {
        let bytes = signing_bytes("/m", "k", 0x0102, &[7; 16], &[3; 32]).unwrap();
        let mut expected = b"tributary/v1/request\n/m\nk\n".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2, 16]);
        expected.extend_from_slice(&[7; 16]);
        expected.extend_from_slice(&[3; 32]);
        assert_eq!(bytes, expected);
    }
}
