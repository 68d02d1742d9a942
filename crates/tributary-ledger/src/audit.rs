//! [`Auditor`]: the incremental core of replay. It takes the entries of the
//! log one at a time — checking position, time, signatures and the consent
//! rules — and can report its state and violations at any point.
//!
//! The coordinator can use it to check an entry before committing it; the
//! auditor's [`crate::replay::replay`] runs the same core after decoding and
//! verifying signatures in parallel.

use std::collections::HashMap;

use crate::checkpoint::Checkpoint;
use crate::compact::CompactRange;
use crate::entry::{Entry, SignatureRole};
use crate::event::{Actor, Event};
use crate::hash::{Hash, leaf_hash};
use crate::ids::{ContributorId, LedgerIndex, Timestamp};
use crate::keys::PublicKey;
use crate::replay::{Replay, ReplayOptions};
use crate::rules::Rules;
use crate::state::LedgerState;
use crate::violation::{Rule, Violation};

/// The outcome of checking one entry's signatures.
pub(crate) enum SignatureCheck {
    Valid,
    Invalid(String),
}

/// Checks a log entry by entry. Cloning it lets a writer try entries on a
/// copy and keep the copy only once they commit.
#[derive(Clone)]
pub struct Auditor {
    trusted_operator: Option<PublicKey>,
    checkpoints: Vec<Checkpoint>,
    roots_at: HashMap<u64, Hash>,
    operator: Option<PublicKey>,
    keys: HashMap<ContributorId, PublicKey>,
    rules: Rules,
    tree: CompactRange,
    index_offset: i128,
    last_time: Option<Timestamp>,
}

impl Auditor {
    /// An auditor for an empty log.
    pub fn new(options: &ReplayOptions) -> Self {
        Self {
            trusted_operator: options.operator_key,
            checkpoints: options.checkpoints.clone(),
            roots_at: options
                .checkpoints
                .iter()
                .map(|c| (c.size, Hash::default()))
                .collect(),
            operator: options.operator_key,
            keys: HashMap::new(),
            rules: Rules::default(),
            tree: CompactRange::new(),
            index_offset: 0,
            last_time: None,
        }
    }

    /// Entries seen so far.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The root over the entries seen so far.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// The state derived so far.
    pub fn state(&self) -> &LedgerState {
        &self.rules.state
    }

    /// The violations found so far (unordered until [`Auditor::finish`]).
    pub fn violations(&self) -> &[Violation] {
        &self.rules.violations
    }

    /// The operator key entries are checked against, once known.
    pub(crate) fn operator(&self) -> Option<PublicKey> {
        self.operator
    }

    /// Appends one entry's bytes and checks it; returns the violations this
    /// step found (for this entry, or duties of earlier entries now overdue).
    pub fn append(&mut self, bytes: &[u8]) -> &[Violation] {
        let decoded = Entry::from_bytes(bytes).map_err(|e| e.to_string());
        if self.size() == 0 {
            self.learn_operator(Some(&decoded));
        }
        let check = match &decoded {
            Ok(entry) => {
                check_signatures(entry, self.operator.as_ref(), |c| self.keys.get(c).copied())
            }
            Err(_) => SignatureCheck::Valid,
        };
        self.push(leaf_hash(bytes), &decoded, check)
    }

    /// Learns the operator key from the first entry (must be `LogCreated`).
    pub(crate) fn learn_operator(&mut self, first: Option<&Result<Entry, String>>) {
        let announced = match first {
            Some(Ok(Entry {
                event: Event::LogCreated(created),
                ..
            })) => Some(created.operator_key),
            Some(_) => {
                let reason = "the log does not start with LogCreated".into();
                self.flag(LedgerIndex(0), Rule::WellFormed, reason);
                None
            }
            None => None,
        };
        if let (Some(trusted), Some(announced)) = (self.trusted_operator, announced)
            && trusted != announced
        {
            let reason = "LogCreated announces an operator key other than the trusted one".into();
            self.flag(LedgerIndex(0), Rule::Signatures, reason);
        }
        self.operator = self.trusted_operator.or(announced);
        self.rules.state.operator_key = self.operator;
    }

    fn flag(&mut self, index: LedgerIndex, rule: Rule, reason: String) {
        self.rules.violations.push(Violation {
            index,
            rule,
            reason,
        });
    }

    /// Applies an entry whose leaf hash, decoding and signatures are known.
    pub(crate) fn push(
        &mut self,
        leaf: Hash,
        decoded: &Result<Entry, String>,
        check: SignatureCheck,
    ) -> &[Violation] {
        let before = self.rules.violations.len();
        let position = self.tree.size();
        let index = LedgerIndex(position);
        self.tree.append_leaf_hash(leaf);
        if let Some(root) = self.roots_at.get_mut(&self.tree.size()) {
            *root = self.tree.root();
        }
        match decoded {
            Ok(entry) => self.check_entry(index, entry, check),
            Err(error) => {
                self.flag(
                    index,
                    Rule::WellFormed,
                    format!("entry does not decode: {error}"),
                );
            }
        }
        &self.rules.violations[before..]
    }

    fn check_entry(&mut self, index: LedgerIndex, entry: &Entry, check: SignatureCheck) {
        let claimed = i128::from(entry.index.0);
        let position = i128::from(index.0);
        // Report a discontinuity once, then follow the shifted numbering.
        if claimed != position && claimed != position + self.index_offset {
            let reason = format!(
                "entry claims index {} but sits at position {index}: entries before it were \
                 removed, inserted or reordered",
                entry.index
            );
            self.flag(index, Rule::WellFormed, reason);
        }
        self.index_offset = claimed - position;
        if let Some(previous) = self.last_time
            && entry.at < previous
        {
            let reason = format!(
                "time {} is earlier than the previous entry's {previous}",
                entry.at
            );
            self.flag(index, Rule::WellFormed, reason);
        }
        self.last_time = Some(entry.at);
        if index.0 > 0 && matches!(entry.event, Event::LogCreated(_)) {
            let reason = "LogCreated may only be the first entry".into();
            self.flag(index, Rule::WellFormed, reason);
            return;
        }
        if entry.event.actor() == Actor::Contributor {
            self.rules
                .close_run(&format!("the contributor entry {index}"));
        }
        match check {
            SignatureCheck::Valid => {
                if let Event::ContributorRegistered(e) = &entry.event {
                    self.keys
                        .entry(e.contributor.clone())
                        .or_insert(e.public_key);
                }
                self.rules.apply(index, entry);
            }
            SignatureCheck::Invalid(reason) => self.flag(index, Rule::Signatures, reason),
        }
    }

    /// Ends the log: overdue duties, checkpoint comparison, violations in index order.
    pub fn finish(mut self) -> Replay {
        self.rules.close_run("the end of the log");
        let size = self.tree.size();
        for checkpoint in &self.checkpoints {
            check_checkpoint(
                checkpoint,
                size,
                &self.roots_at,
                &self.rules.state,
                &mut self.rules.violations,
            );
        }
        let mut violations = self.rules.violations;
        violations.sort_by_key(|v| v.index);
        Replay {
            state: self.rules.state,
            violations,
            size,
            root: self.tree.root(),
        }
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

/// Checks the seal and statement signatures of one entry. `key_of` gives the
/// key registered for a contributor *before* this entry.
pub(crate) fn check_signatures(
    entry: &Entry,
    operator: Option<&PublicKey>,
    key_of: impl Fn(&ContributorId) -> Option<PublicKey>,
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
            match key_of(contributor) {
                Some(key) => Some((contributor, key)),
                None => {
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
