//! C2SP `signed-note` with Ed25519: key ids, verifier and signer key strings,
//! signing a text, and opening a note against trusted verifiers.
//!
//! - key id = first four bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`;
//! - verifier key = `name+hex(key id)+base64(0x01 ‖ public key)`;
//! - signer key = `PRIVATE+KEY+name+hex(key id)+base64(0x01 ‖ seed)`
//!   (the form Go's `golang.org/x/mod/sumdb/note` reads);
//! - signature line = `— name base64(key id ‖ signature)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The signature type byte of Ed25519 in signed notes.
pub const ED25519_TYPE: u8 = 0x01;

/// Most signatures accepted on one note (the spec requires at least 16).
pub const MAX_SIGNATURES: usize = 100;

const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a key string or note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key string is malformed or inconsistent.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// The note text or signature block is malformed.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// A signature by a known key does not verify.
    #[error("signature by {0} does not verify")]
    InvalidSignature(String),
    /// No signature by a known key was found.
    #[error("note has no signature by a trusted key")]
    Unverified,
}

/// The key id of an Ed25519 key under a name.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519_TYPE]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::MalformedKey(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// Splits `name+hexid+base64` and checks the id against the decoded key bytes.
fn parse_key_parts(text: &str) -> Result<(String, u32, [u8; 32]), NoteError> {
    let bad = |why: &str| NoteError::MalformedKey(why.to_string());
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected name+id+key"));
    };
    check_name(name)?;
    let id_ok = id_hex.len() == 8
        && id_hex
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !id_ok {
        return Err(bad("key id must be 8 lower-case hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id is not hex"))?;
    let raw = BASE64
        .decode(key_b64)
        .map_err(|_| bad("key is not base64"))?;
    let Some((&ED25519_TYPE, key)) = raw.split_first() else {
        return Err(bad("only Ed25519 (type 0x01) keys are supported"));
    };
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| bad("Ed25519 key must be 32 bytes"))?;
    Ok((name.to_string(), id, key))
}

/// A trusted public key that can verify note signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for an Ed25519 key under a name.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, key.as_bytes()),
            key,
        })
    }

    /// Parses a verifier key string `name+hex(id)+base64(0x01 ‖ key)`.
    pub fn from_key_string(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_key_parts(text)?;
        if key_id(&name, &key) != id {
            return Err(NoteError::MalformedKey(
                "key id does not match the key".into(),
            ));
        }
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::MalformedKey("not an Ed25519 public key".into()))?;
        Ok(Self { name, id, key })
    }

    /// The verifier key string.
    pub fn to_key_string(&self) -> String {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, BASE64.encode(raw))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }
}

/// A private key that signs notes under a name.
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer for an Ed25519 key under a name.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses a signer key string `PRIVATE+KEY+name+hex(id)+base64(0x01 ‖ seed)`.
    pub fn from_key_string(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::MalformedKey("missing PRIVATE+KEY+ prefix".into()))?;
        let (name, id, seed) = parse_key_parts(rest)?;
        let signer = Self::new(&name, SigningKey::from_bytes(&seed))?;
        if signer.id != id {
            return Err(NoteError::MalformedKey(
                "key id does not match the key".into(),
            ));
        }
        Ok(signer)
    }

    /// The signer key string (secret).
    pub fn to_key_string(&self) -> String {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            BASE64.encode(raw)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }
}

fn check_text(text: &str, what: &str) -> Result<(), NoteError> {
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::MalformedNote(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

/// Signs `text` (which must end in a newline) with every signer.
pub fn sign_note(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    check_text(text, "text")?;
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote(
            "text must end with a newline".into(),
        ));
    }
    let mut note = format!("{text}\n");
    for signer in signers {
        let mut blob = signer.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signer.key.sign(text.as_bytes()).to_bytes());
        note.push_str(&format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            signer.name,
            BASE64.encode(blob)
        ));
    }
    Ok(note)
}

/// A note whose signatures were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// Names of the trusted keys whose signatures verified.
    pub verified_by: Vec<String>,
}

/// Verifies a signed note against trusted verifiers.
///
/// Signatures by unknown keys are ignored; a signature by a known key (same
/// name and id) that fails rejects the whole note; at least one must verify.
pub fn open_note(note: &str, verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    let bad = |why: &str| NoteError::MalformedNote(why.to_string());
    check_text(note, "note")?;
    if !note.ends_with('\n') {
        return Err(bad("note must end with a newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let text = &note[..split + 1];
    let block = &note[split + 2..];
    let lines: Vec<&str> = block
        .strip_suffix('\n')
        .unwrap_or(block)
        .split('\n')
        .collect();
    if block.is_empty() || lines.len() > MAX_SIGNATURES {
        return Err(bad("note must carry between 1 and 100 signatures"));
    }
    let mut verified_by = Vec::new();
    for line in lines {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or_else(|| bad("signature line must start with an em dash and a space"))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| bad("signature line has no signature"))?;
        check_name(name).map_err(|_| bad("invalid key name in signature line"))?;
        let blob = BASE64
            .decode(blob)
            .map_err(|_| bad("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(bad("signature too short"));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let Some(verifier) = verifiers.iter().find(|v| v.name == name && v.id == id) else {
            continue;
        };
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
            .map_err(|_| NoteError::InvalidSignature(name.to_string()))?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| NoteError::InvalidSignature(name.to_string()))?;
        verified_by.push(name.to_string());
    }
    if verified_by.is_empty() {
        return Err(NoteError::Unverified);
    }
    Ok(OpenedNote {
        text: text.to_string(),
        verified_by,
    })
}
