//! What replay reports: a [`Violation`] of one [`Rule`] at one entry, with a
//! reason a person can read.

use std::fmt;

use crate::ids::LedgerIndex;

/// The rules replay checks: the six invariants of DESIGN.md ("The consent
/// ledger"), plus the structural rule that makes them checkable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// 0 — every entry decodes as a canonical entry of a known version, sits at the
    /// index it claims, is not older than the entry before it, and refers only to
    /// things that exist (the log starts with `LogCreated`; ids are not reused).
    WellFormed,
    /// 1 — the tree recomputed from the entries equals every checkpoint's root.
    TreeHead,
    /// 2 — every entry is sealed by the operator, every contributor statement
    /// verifies against the key registered for that contributor, and a
    /// contributor acts only on its own records.
    Signatures,
    /// 3 — every `ExpertAccepted` had an active consent of the submitter
    /// covering its digest at that point.
    AcceptedWithConsent,
    /// 4 — every `ModelVersionPublished` lists only accepted experts whose
    /// consent was active and allowed the version's purpose at that point.
    VersionContents,
    /// 5 — after a withdrawal or expiry no version lists the expert, and every
    /// current version that listed it is replaced at once.
    WithdrawalHonoured,
    /// 6 — every withdrawn expert is erased.
    ErasureRecorded,
}

impl Rule {
    /// The invariant's number in DESIGN.md (0 for the structural rule).
    pub fn number(self) -> u8 {
        match self {
            Rule::WellFormed => 0,
            Rule::TreeHead => 1,
            Rule::Signatures => 2,
            Rule::AcceptedWithConsent => 3,
            Rule::VersionContents => 4,
            Rule::WithdrawalHonoured => 5,
            Rule::ErasureRecorded => 6,
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::WellFormed => "well-formed log",
            Rule::TreeHead => "tree head",
            Rule::Signatures => "signatures",
            Rule::AcceptedWithConsent => "accepted with consent",
            Rule::VersionContents => "version contents",
            Rule::WithdrawalHonoured => "withdrawal honoured",
            Rule::ErasureRecorded => "erasure recorded",
        }
    }
}

/// One broken rule at one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The entry at fault (its position in the log).
    pub index: LedgerIndex,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, for people.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {}: invariant {} ({}): {}",
            self.index,
            self.rule.number(),
            self.rule.name(),
            self.reason
        )
    }
}
