//! The `--state` file: the last signed checkpoint this auditor accepted, kept
//! so the next run can demand that the log only grew. Two checkpoints of the
//! same log signed by the same key that are not consistent are proof that
//! the operator rewrote history; the note is kept verbatim as that evidence.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tributary_ledger::Checkpoint;
use tributary_ledger::note::NoteVerifier;

/// What the state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The signed checkpoint note, verbatim.
    pub checkpoint_note: String,
}

/// Reads the state file, if it exists, and re-verifies its checkpoint.
pub fn load(path: &Path, verifier: &NoteVerifier) -> anyhow::Result<Option<(Checkpoint, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let saved: SavedState = serde_json::from_str(&text)
        .with_context(|| format!("parsing the state file {}", path.display()))?;
    let checkpoint = Checkpoint::open(&saved.checkpoint_note, std::slice::from_ref(verifier))
        .with_context(|| {
            format!(
                "the checkpoint saved in {} does not verify with this key",
                path.display()
            )
        })?;
    Ok(Some((checkpoint, saved.checkpoint_note)))
}

/// Writes the state file atomically (a temporary file renamed over it).
pub fn save(path: &Path, note: &str) -> anyhow::Result<()> {
    let saved = SavedState {
        checkpoint_note: note.to_string(),
    };
    let mut text = serde_json::to_string_pretty(&saved)?;
    text.push('\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("writing {}", Path::new(&temporary).display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
