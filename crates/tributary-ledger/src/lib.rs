//! The Tributary consent ledger, as a library with no I/O.
//!
//! An append-only RFC 6962 / RFC 9162 Merkle log of signed, typed consent
//! events, with C2SP signed checkpoints and tiles, and the pure replay function
//! an auditor runs to check the invariants of the design.
//!
//! A log in a few lines — the coordinator seals signed events, the auditor replays them:
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use tributary_ledger::event::{ConsentGranted, ContributorRegistered, LogCreated};
//! use tributary_ledger::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let operator = SigningKey::from_bytes(&[1; 32]);
//! let alice = SigningKey::from_bytes(&[2; 32]);
//! let id = ContributorId::new("alice")?;
//! let events = vec![
//!     SignedEvent::coordinator(Event::LogCreated(LogCreated {
//!         origin: "ledger.example.org/tributary".into(),
//!         operator_key: PublicKey::of(&operator),
//!     })),
//!     SignedEvent::contributor(
//!         Event::ContributorRegistered(ContributorRegistered {
//!             contributor: id.clone(),
//!             organisation: "Alice Hospital".into(),
//!             public_key: PublicKey::of(&alice),
//!         }),
//!         &alice,
//!     )?
//!     .invited_by(&operator)?,
//!     SignedEvent::contributor(
//!         Event::ConsentGranted(ConsentGranted {
//!             consent: ConsentId::new("consent-1")?,
//!             contributor: id,
//!             expert: ExpertDigest(Sha256Digest::of(b"expert weights")),
//!             purposes: vec![Purpose::new("research")?],
//!             expires_at: None,
//!             data_description: "discharge letters".into(),
//!             licence: "CC-BY-4.0".into(),
//!             jurisdiction: "EU".into(),
//!         }),
//!         &alice,
//!     )?,
//! ];
//! let mut store = MemoryStore::new();
//! let mut entries = Vec::new();
//! for (i, signed) in events.into_iter().enumerate() {
//!     let entry = Entry::seal(signed, LedgerIndex(i as u64), Timestamp(1_750_000_000), &operator)?;
//!     let bytes = entry.to_bytes()?;
//!     store.append_entry(&bytes);
//!     entries.push(bytes);
//! }
//! let checkpoint = Checkpoint::new("ledger.example.org/tributary", 3, root_hash(&store, 3)?);
//! let options = ReplayOptions {
//!     operator_key: Some(PublicKey::of(&operator)),
//!     checkpoints: vec![checkpoint],
//! };
//! let audit = replay(&entries, &options);
//! assert!(audit.is_clean());
//! assert_eq!(audit.state.consents.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - [`hash`]: leaf and node hashing, the [`struct@Hash`] type.
//! - [`node`]: addresses of complete subtrees.
//! - [`store`]: the storage trait ([`HashStore`]) and the rows an append writes.
//! - [`memory_store`]: an in-memory tree.
//! - [`compact`]: streaming tree heads in O(log n) memory.
//! - [`proof`]: tree heads, inclusion and consistency proofs from storage.
//! - [`verify`]: RFC 9162 proof verification.
//! - [`ids`]: identifier, digest, number and time newtypes.
//! - [`canonical`]: canonical (RFC 8785) JSON bytes.
//! - [`keys`]: Ed25519 public keys and signatures.
//! - [`event`]: the typed events and who signs them.
//! - [`entry`]: log entries, their signatures and their bytes.
//! - [`note`]: C2SP signed notes with Ed25519.
//! - [`checkpoint`]: C2SP tlog checkpoints.
//! - [`tiles`]: the C2SP tlog-tiles layout.
//! - [`receipt`]: receipts (entry + inclusion proof + signed checkpoint) and checkpoint consistency.
//! - [`violation`]: the rules replay checks and what it reports.
//! - [`state`]: the state derived from the log.
//! - `rules`: the consent rules applied entry by entry (private).
//! - `withdrawal`: consent endings and the coordinator's duties (private).
//! - [`audit`]: the incremental auditor at the core of replay.
//! - [`mod@replay`]: the pure replay and audit function.
//! - [`query`]: answers about versions, experts and withdrawals.

pub mod audit;
pub mod canonical;
pub mod checkpoint;
pub mod compact;
pub mod entry;
pub mod event;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod memory_store;
pub mod node;
pub mod note;
pub mod proof;
pub mod query;
pub mod receipt;
pub mod replay;
mod rules;
pub mod state;
pub mod store;
pub mod tiles;
pub mod verify;
pub mod violation;
mod withdrawal;

pub use audit::Auditor;
pub use checkpoint::{Checkpoint, CheckpointError};
pub use compact::CompactRange;
pub use entry::{Entry, EntryError, SignatureRole, SignedEvent};
pub use event::{Actor, Event};
pub use hash::{Hash, HashLengthError, leaf_hash, node_hash};
pub use ids::{
    ConsentId, ContributorId, ExpertDigest, LedgerIndex, Purpose, ReasonCode, Sha256Digest,
    SubmissionId, Timestamp, VersionNumber,
};
pub use keys::{KeyError, PublicKey, Signature};
pub use memory_store::MemoryStore;
pub use node::NodeId;
pub use note::{NoteError, NoteSigner, NoteVerifier, OpenedNote, open_note, sign_note};
pub use proof::{ProofError, consistency_proof, inclusion_proof, root_hash};
pub use query::{ListedExpert, VersionContents, WithdrawalStatus};
pub use receipt::{Receipt, ReceiptError, verify_checkpoint_consistency};
pub use replay::{Replay, ReplayOptions, replay};
pub use state::LedgerState;
pub use store::{HashStore, StoreError, hashes_to_append};
pub use verify::{VerifyError, root_from_inclusion_proof, verify_consistency, verify_inclusion};
pub use violation::{Rule, Violation};
