//! Receipts: what a contributor keeps after an append — the entry, its index,
//! an inclusion proof and the signed checkpoint that covers it — and the
//! checks that let anyone verify one without trusting the operator.

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{Entry, EntryError};
use crate::hash::{Hash, leaf_hash};
use crate::ids::LedgerIndex;
use crate::note::NoteVerifier;
use crate::verify::{VerifyError, verify_consistency, verify_inclusion};

/// Why a receipt or a checkpoint pair did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The signed checkpoint is invalid or not signed by a trusted key.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The entry bytes are not a valid entry.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The entry names another index than the receipt.
    #[error("the entry says index {entry} but the receipt says {receipt}")]
    IndexMismatch {
        /// Index inside the entry.
        entry: LedgerIndex,
        /// Index on the receipt.
        receipt: LedgerIndex,
    },
    /// The two checkpoints belong to different logs.
    #[error("checkpoints of different logs: {0} and {1}")]
    OriginMismatch(String, String),
    /// A proof failed.
    #[error(transparent)]
    Proof(#[from] VerifyError),
}

/// Proof that an entry is in the log at an index, under a signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's canonical bytes.
    pub entry: Vec<u8>,
    /// Its index.
    pub index: LedgerIndex,
    /// Its inclusion proof in the checkpoint's tree.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl Receipt {
    /// Verifies the checkpoint's signature, the entry's index and its inclusion;
    /// returns the decoded entry and the checkpoint.
    pub fn verify(&self, verifiers: &[NoteVerifier]) -> Result<(Entry, Checkpoint), ReceiptError> {
        let checkpoint = Checkpoint::open(&self.checkpoint, verifiers)?;
        let entry = Entry::from_bytes(&self.entry)?;
        if entry.index != self.index {
            return Err(ReceiptError::IndexMismatch {
                entry: entry.index,
                receipt: self.index,
            });
        }
        verify_inclusion(
            &leaf_hash(&self.entry),
            self.index.0,
            checkpoint.size,
            &self.proof,
            &checkpoint.root,
        )?;
        Ok((entry, checkpoint))
    }
}

/// Verifies that `newer` extends `older` (same origin, consistency proof).
pub fn verify_checkpoint_consistency(
    older: &Checkpoint,
    newer: &Checkpoint,
    proof: &[Hash],
) -> Result<(), ReceiptError> {
    if older.origin != newer.origin {
        return Err(ReceiptError::OriginMismatch(
            older.origin.clone(),
            newer.origin.clone(),
        ));
    }
    verify_consistency(older.size, newer.size, proof, &older.root, &newer.root)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::entry::SignedEvent;
    use crate::event::{ConsentExpired, Event};
    use crate::ids::{ConsentId, Timestamp};
    use crate::memory_store::MemoryStore;
    use crate::note::NoteSigner;
    use crate::proof::{consistency_proof, inclusion_proof, root_hash};

    #[test]
    fn receipts_verify_and_detect_lies() {
        let operator = SigningKey::from_bytes(&[4; 32]);
        let signer = NoteSigner::new("log.example/t", operator.clone()).unwrap();
        let mut store = MemoryStore::new();
        let mut entries = Vec::new();
        for i in 0..10u64 {
            let event = Event::ConsentExpired(ConsentExpired {
                consent: ConsentId::new(format!("c{i}")).unwrap(),
            });
            let entry = Entry::seal(
                SignedEvent::coordinator(event),
                LedgerIndex(i),
                Timestamp(i),
                &operator,
            )
            .unwrap()
            .to_bytes()
            .unwrap();
            store.append_entry(&entry);
            entries.push(entry);
        }
        let checkpoint = Checkpoint::new("log.example/t", 10, root_hash(&store, 10).unwrap());
        let receipt = Receipt {
            entry: entries[6].clone(),
            index: LedgerIndex(6),
            proof: inclusion_proof(&store, 6, 10).unwrap(),
            checkpoint: checkpoint.sign(&signer).unwrap(),
        };
        let verifiers = [signer.verifier()];
        let (entry, opened) = receipt.verify(&verifiers).unwrap();
        assert_eq!(entry.index, LedgerIndex(6));
        assert_eq!(opened, checkpoint);
        let mut moved = receipt.clone();
        moved.index = LedgerIndex(5);
        assert!(moved.verify(&verifiers).is_err());
        let mut other = receipt.clone();
        other.entry = entries[5].clone();
        assert!(other.verify(&verifiers).is_err());
        let stranger = NoteSigner::new("log.example/t", SigningKey::from_bytes(&[5; 32])).unwrap();
        assert!(receipt.verify(&[stranger.verifier()]).is_err());

        let older = Checkpoint::new("log.example/t", 4, root_hash(&store, 4).unwrap());
        let proof = consistency_proof(&store, 4, 10).unwrap();
        verify_checkpoint_consistency(&older, &checkpoint, &proof).unwrap();
        let forked = Checkpoint::new("log.example/t", 4, Hash([0; 32]));
        assert!(verify_checkpoint_consistency(&forked, &checkpoint, &proof).is_err());
        let elsewhere = Checkpoint::new("other.example/t", 4, older.root);
        assert!(verify_checkpoint_consistency(&elsewhere, &checkpoint, &proof).is_err());
    }
}
