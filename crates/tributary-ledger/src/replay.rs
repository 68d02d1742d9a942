//! [`replay`]: the pure function an auditor runs over the raw entries of the
//! log. It recomputes the tree, checks every signature, applies the consent
//! rules, and returns the derived state with every violation found. The
//! sequential part is the incremental [`Auditor`].
//!
//! Stages:
//! 1. decode every entry and hash it as a leaf (in parallel);
//! 2. learn the keys: the operator's from `LogCreated` (or the auditor's trust
//!    anchor) and each contributor's from its `ContributorRegistered`;
//! 3. verify every seal and statement signature (in parallel, `verify_strict`);
//! 4. walk the entries in order: position, time, rules (the private `rules` and `withdrawal` modules);
//! 5. compare the recomputed tree heads with the checkpoints given.
//!
//! Entries whose signatures fail are reported and then ignored: the derived
//! state is built from authentic entries only.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::audit::{Auditor, SignatureCheck, check_signatures};
use crate::checkpoint::Checkpoint;
use crate::entry::Entry;
use crate::event::Event;
use crate::hash::{Hash, leaf_hash};
use crate::ids::ContributorId;
use crate::keys::PublicKey;
use crate::state::LedgerState;
use crate::violation::Violation;

/// What the auditor brings to a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// The operator key the auditor trusts, obtained out of band (e.g. the
    /// checkpoint verifier key). `None` trusts the key the log's `LogCreated`
    /// entry announces; the key used is reported in [`LedgerState::operator_key`].
    pub operator_key: Option<PublicKey>,
    /// Signature-checked checkpoints the log must match (invariant 1). Several
    /// checkpoints seen over time are checked against the same entries, which
    /// also proves they are consistent with each other.
    pub checkpoints: Vec<Checkpoint>,
}

/// The result of a replay.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The state derived from the authentic entries.
    pub state: LedgerState,
    /// Every violation, ordered by entry index.
    pub violations: Vec<Violation>,
    /// Number of entries replayed.
    pub size: u64,
    /// The RFC 6962 root of all entries.
    pub root: Hash,
}

impl Replay {
    /// Whether no rule is broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations reported at one entry.
    pub fn violations_at(&self, index: u64) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.index.0 == index)
    }
}

/// Replays raw entries (their stored bytes, in log order).
pub fn replay<B: AsRef<[u8]> + Sync>(entries: &[B], options: &ReplayOptions) -> Replay {
    // Stage 1.
    let decoded: Vec<(Hash, Result<Entry, String>)> = entries
        .par_iter()
        .map(|bytes| {
            let bytes = bytes.as_ref();
            (
                leaf_hash(bytes),
                Entry::from_bytes(bytes).map_err(|e| e.to_string()),
            )
        })
        .collect();

    // Stage 2: the operator key, then every validly signed registration.
    let mut auditor = Auditor::new(options);
    auditor.learn_operator(decoded.first().map(|(_, e)| e));
    let operator = auditor.operator();
    let mut registered: HashMap<&ContributorId, (usize, PublicKey)> = HashMap::new();
    for (position, (_, entry)) in decoded.iter().enumerate() {
        if let Ok(
            entry @ Entry {
                event: Event::ContributorRegistered(e),
                ..
            },
        ) = entry
            && !registered.contains_key(&e.contributor)
            && matches!(
                check_signatures(entry, operator.as_ref(), |_| None),
                SignatureCheck::Valid
            )
        {
            registered.insert(&e.contributor, (position, e.public_key));
        }
    }

    // Stage 3.
    let checks: Vec<SignatureCheck> = decoded
        .par_iter()
        .enumerate()
        .map(|(position, (_, entry))| match entry {
            Ok(entry) => check_signatures(entry, operator.as_ref(), |contributor| {
                registered
                    .get(contributor)
                    .filter(|(at, _)| *at < position)
                    .map(|(_, key)| *key)
            }),
            Err(_) => SignatureCheck::Valid,
        })
        .collect();

    // Stages 4 and 5.
    for ((leaf, entry), check) in decoded.iter().zip(checks) {
        auditor.push(*leaf, entry, check);
    }
    auditor.finish()
}
