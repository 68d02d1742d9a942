//! [`replay`]: the pure function an auditor runs over the raw entries of the
//! log. It recomputes the tree, checks every signature, applies the consent
//! rules, and returns the derived state with every violation found.
//!
//! Stages:
//! 1. decode every entry and hash it as a leaf (in parallel);
//! 2. learn the keys: the operator's from `LogCreated` (or the auditor's trust
//!    anchor) and each contributor's from its `ContributorRegistered`;
//! 3. verify every seal and statement signature (in parallel, `verify_strict`);
//! 4. walk the entries in order: position, time, rules (see [`crate::rules`]);
//! 5. compare the recomputed tree heads with the checkpoints given.
//!
//! Entries whose signatures fail are reported and then ignored: the derived
//! state is built from authentic entries only.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::compact::CompactRange;
use crate::entry::{Entry, SignatureRole};
use crate::event::{Actor, Event};
use crate::hash::{Hash, leaf_hash};
use crate::ids::{ContributorId, LedgerIndex};
use crate::keys::PublicKey;
use crate::rules::Rules;
use crate::state::LedgerState;
use crate::violation::{Rule, Violation};

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

/// The outcome of checking one entry's signatures.
enum SignatureCheck {
    Valid,
    Invalid(String),
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

    let mut rules = Rules::default();
    let mut flag = |index: u64, rule: Rule, reason: String| {
        rules.violations.push(Violation {
            index: LedgerIndex(index),
            rule,
            reason,
        })
    };

    // Stage 2.
    let announced = match decoded.first().map(|(_, e)| e) {
        Some(Ok(Entry {
            event: Event::LogCreated(created),
            ..
        })) => Some(created.operator_key),
        Some(_) => {
            flag(
                0,
                Rule::WellFormed,
                "the log does not start with LogCreated".into(),
            );
            None
        }
        None => None,
    };
    if let (Some(trusted), Some(announced)) = (options.operator_key, announced)
        && trusted != announced
    {
        let reason = "LogCreated announces an operator key other than the trusted one".into();
        flag(0, Rule::Signatures, reason);
    }
    let operator = options.operator_key.or(announced);
    let mut contributor_keys: HashMap<&ContributorId, (usize, PublicKey)> = HashMap::new();
    for (position, (_, entry)) in decoded.iter().enumerate() {
        if let Ok(Entry {
            event: Event::ContributorRegistered(e),
            ..
        }) = entry
        {
            contributor_keys
                .entry(&e.contributor)
                .or_insert((position, e.public_key));
        }
    }

    // Stage 3.
    let checks: Vec<SignatureCheck> = decoded
        .par_iter()
        .enumerate()
        .map(|(position, (_, entry))| match entry {
            Ok(entry) => check_signatures(position, entry, operator.as_ref(), &contributor_keys),
            Err(_) => SignatureCheck::Valid,
        })
        .collect();

    // Stage 4.
    rules.state.operator_key = operator;
    let mut tree = CompactRange::new();
    let mut roots_at: HashMap<u64, Hash> = options
        .checkpoints
        .iter()
        .map(|c| (c.size, Hash::default()))
        .collect();
    let mut index_offset: i128 = 0;
    let mut last_time = None;
    for (position, ((leaf, entry), check)) in decoded.iter().zip(&checks).enumerate() {
        tree.append_leaf_hash(*leaf);
        if let Some(root) = roots_at.get_mut(&tree.size()) {
            *root = tree.root();
        }
        let index = LedgerIndex(position as u64);
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                rules.violations.push(Violation {
                    index,
                    rule: Rule::WellFormed,
                    reason: format!("entry does not decode: {error}"),
                });
                continue;
            }
        };
        let claimed = i128::from(entry.index.0);
        let position_i = position as i128;
        // Report a discontinuity once, then follow the shifted numbering.
        if claimed != position_i && claimed != position_i + index_offset {
            let reason = format!(
                "entry claims index {} but sits at position {position}: entries before it were \
                 removed, inserted or reordered",
                entry.index
            );
            rules.violations.push(Violation {
                index,
                rule: Rule::WellFormed,
                reason,
            });
        }
        index_offset = claimed - position_i;
        if let Some(previous) = last_time
            && entry.at < previous
        {
            let reason = format!(
                "time {} is earlier than the previous entry's {previous}",
                entry.at
            );
            rules.violations.push(Violation {
                index,
                rule: Rule::WellFormed,
                reason,
            });
        }
        last_time = Some(entry.at);
        if position > 0 && matches!(entry.event, Event::LogCreated(_)) {
            let reason = "LogCreated may only be the first entry".into();
            rules.violations.push(Violation {
                index,
                rule: Rule::WellFormed,
                reason,
            });
            continue;
        }
        if entry.event.actor() == Actor::Contributor {
            rules.close_run(&format!("the contributor entry {index}"));
        }
        match check {
            SignatureCheck::Valid => rules.apply(index, entry),
            SignatureCheck::Invalid(reason) => rules.violations.push(Violation {
                index,
                rule: Rule::Signatures,
                reason: reason.clone(),
            }),
        }
    }
    rules.close_run("the end of the log");

    // Stage 5.
    let size = tree.size();
    for checkpoint in &options.checkpoints {
        check_checkpoint(
            checkpoint,
            size,
            &roots_at,
            &rules.state,
            &mut rules.violations,
        );
    }

    let mut violations = rules.violations;
    violations.sort_by_key(|v| v.index);
    Replay {
        state: rules.state,
        violations,
        size,
        root: tree.root(),
    }
}

fn check_checkpoint(
    checkpoint: &Checkpoint,
    size: u64,
    roots_at: &HashMap<u64, Hash>,
    state: &LedgerState,
    violations: &mut Vec<Violation>,
) {
    let mut flag = |index: u64, reason: String| {
        violations.push(Violation {
            index: LedgerIndex(index),
            rule: Rule::TreeHead,
            reason,
        })
    };
    if state
        .origin
        .as_deref()
        .is_some_and(|origin| origin != checkpoint.origin)
    {
        flag(
            0,
            format!(
                "checkpoint origin {} is not this log's origin",
                checkpoint.origin
            ),
        );
    }
    if checkpoint.size > size {
        let reason = format!(
            "a checkpoint covers {} entries but only {size} are present: entries from here on are missing",
            checkpoint.size
        );
        flag(size, reason);
        return;
    }
    let recomputed = if checkpoint.size == 0 {
        Hash::empty_root()
    } else {
        roots_at.get(&checkpoint.size).copied().unwrap_or_default()
    };
    if recomputed != checkpoint.root {
        let reason = format!(
            "the root recomputed over the first {} entries is {recomputed}, but the checkpoint \
             signed {}: an entry up to here was changed",
            checkpoint.size, checkpoint.root
        );
        flag(checkpoint.size.saturating_sub(1), reason);
    }
}

fn check_signatures(
    position: usize,
    entry: &Entry,
    operator: Option<&PublicKey>,
    contributor_keys: &HashMap<&ContributorId, (usize, PublicKey)>,
) -> SignatureCheck {
    let Some(operator) = operator else {
        return SignatureCheck::Invalid("no operator key is known to check the seal".into());
    };
    if entry.verify_seal(operator).is_err() {
        return SignatureCheck::Invalid(
            "the operator's seal does not verify: the entry was altered after it was appended, \
             or not appended by the operator"
                .into(),
        );
    }
    let statement_key = match (&entry.event, entry.event.actor()) {
        (Event::ContributorRegistered(e), _) => {
            if entry
                .verify_statement(SignatureRole::Invite, operator)
                .is_err()
            {
                return SignatureCheck::Invalid(format!(
                    "the operator's invitation of {} does not verify",
                    e.contributor
                ));
            }
            Some((&e.contributor, e.public_key))
        }
        (event, Actor::Contributor) => {
            let Some(contributor) = event.signing_contributor() else {
                return SignatureCheck::Invalid("contributor event without a contributor".into());
            };
            match contributor_keys.get(contributor) {
                Some((registered, key)) if *registered < position => Some((contributor, *key)),
                _ => {
                    return SignatureCheck::Invalid(format!(
                        "{} signs as {contributor}, who is not registered before this entry",
                        event.kind()
                    ));
                }
            }
        }
        (_, Actor::Coordinator) => {
            if entry.contributor_signature.is_some() || entry.invite_signature.is_some() {
                return SignatureCheck::Invalid(
                    "a coordinator event carries a statement signature".into(),
                );
            }
            None
        }
    };
    if let Some((contributor, key)) = statement_key
        && entry
            .verify_statement(SignatureRole::Contributor, &key)
            .is_err()
    {
        return SignatureCheck::Invalid(format!(
            "the {} statement does not verify against the key registered for {contributor}",
            entry.event.kind()
        ));
    }
    SignatureCheck::Valid
}
