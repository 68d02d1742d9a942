//! C2SP `tlog-checkpoint` bodies: origin, tree size, base64 root hash and
//! optional extension lines. Signing and opening go through [`crate::note`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::hash::Hash;
use crate::note::{NoteError, NoteSigner, NoteVerifier, open_note, sign_note};

/// Why a checkpoint body could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text does not have the checkpoint shape.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The signed note around it is invalid.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A transparency-log checkpoint: the signed statement of a tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `ledger.example.org/tributary`.
    pub origin: String,
    /// Number of entries covered.
    pub size: u64,
    /// RFC 6962 root of those entries.
    pub root: Hash,
    /// Optional opaque extension lines (not recommended by the spec; kept for completeness).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: `origin\nsize\nbase64(root)\n[extension\n]*`.
    pub fn to_text(&self) -> Result<String, CheckpointError> {
        if self.origin.is_empty() || self.origin.contains('\n') {
            return Err(CheckpointError::Malformed(
                "origin must be one non-empty line".into(),
            ));
        }
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.0)
        );
        for line in &self.extensions {
            if line.is_empty() || line.contains('\n') {
                return Err(CheckpointError::Malformed(
                    "extension lines must be single non-empty lines".into(),
                ));
            }
            text.push_str(line);
            text.push('\n');
        }
        Ok(text)
    }

    /// Parses note text (as returned by [`open_note`]) into a checkpoint.
    pub fn from_text(text: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("empty origin"))?;
        let size_line = lines.next().ok_or_else(|| bad("missing tree size"))?;
        let canonical_size = size_line == "0"
            || (!size_line.starts_with('0') && size_line.bytes().all(|b| b.is_ascii_digit()));
        if size_line.is_empty() || !canonical_size {
            return Err(bad("tree size must be a decimal without leading zeroes"));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| bad("tree size out of range"))?;
        let root_line = lines.next().ok_or_else(|| bad("missing root hash"))?;
        let root_bytes = BASE64
            .decode(root_line)
            .map_err(|_| bad("root is not base64"))?;
        let root = Hash::from_slice(&root_bytes).map_err(|_| bad("root is not 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("extension lines must be non-empty"));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint as a note; the signer's name should equal the origin.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, CheckpointError> {
        Ok(sign_note(&self.to_text()?, &[signer])?)
    }

    /// Verifies a signed checkpoint note against trusted verifiers and parses it.
    pub fn open(note: &str, verifiers: &[NoteVerifier]) -> Result<Self, CheckpointError> {
        let opened = open_note(note, verifiers)?;
        Self::from_text(&opened.text)
    }
}
