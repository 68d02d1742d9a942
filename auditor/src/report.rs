//! The audit report: the checkpoint verified, the transport checks, one line
//! per invariant of DESIGN.md with pass or fail, every violation with its
//! entry index, and a summary — as text for people or JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;
use tributary_ledger::{Rule, Violation};

/// Every rule, in the order of DESIGN.md (0 is the structural rule).
pub const RULES: [Rule; 7] = [
    Rule::WellFormed,
    Rule::TreeHead,
    Rule::Signatures,
    Rule::AcceptedWithConsent,
    Rule::VersionContents,
    Rule::WithdrawalHonoured,
    Rule::ErasureRecorded,
];

/// One check of the download itself.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figure or the reason.
    pub detail: String,
}

/// One invariant's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct InvariantOutcome {
    /// Its number in DESIGN.md (0 for the structural rule).
    pub number: u8,
    /// Its short name.
    pub name: &'static str,
    /// Whether no entry breaks it.
    pub passed: bool,
    /// How many violations.
    pub violations: usize,
}

/// One violation, flattened for output.
#[derive(Clone, Debug, Serialize)]
pub struct ViolationLine {
    /// The entry at fault.
    pub index: u64,
    /// The invariant broken.
    pub invariant: u8,
    /// Its name.
    pub rule: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl From<&Violation> for ViolationLine {
    fn from(v: &Violation) -> Self {
        Self {
            index: v.index.0,
            invariant: v.rule.number(),
            rule: v.rule.name(),
            reason: v.reason.clone(),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The log prefix audited.
    pub url: String,
    /// The checkpoint's origin line.
    pub origin: Option<String>,
    /// The checkpoint's tree size.
    pub tree_size: Option<u64>,
    /// The checkpoint's root, hex.
    pub root: Option<String>,
    /// Keys whose checkpoint signatures verified.
    pub signed_by: Vec<String>,
    /// Checks of the download (signature, tiles, consistency).
    pub checks: Vec<Check>,
    /// One outcome per invariant (empty when the log could not be read).
    pub invariants: Vec<InvariantOutcome>,
    /// Every violation, by entry index.
    pub violations: Vec<ViolationLine>,
    /// Whether everything passed.
    pub passed: bool,
    /// One sentence.
    pub summary: String,
}

impl Report {
    /// Records a check.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail: detail.into(),
        });
    }

    /// Fills the invariants, the verdict and the summary from the violations found.
    pub fn conclude(&mut self, mut violations: Vec<Violation>, replayed: bool) {
        violations.sort_by_key(|v| (v.index, v.rule));
        if replayed {
            self.invariants = RULES
                .iter()
                .map(|rule| {
                    let count = violations.iter().filter(|v| v.rule == *rule).count();
                    InvariantOutcome {
                        number: rule.number(),
                        name: rule.name(),
                        passed: count == 0,
                        violations: count,
                    }
                })
                .collect();
        }
        self.violations = violations.iter().map(ViolationLine::from).collect();
        let failed_checks: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        self.passed = replayed && failed_checks.is_empty() && self.violations.is_empty();
        self.summary = if self.passed {
            format!(
                "PASS: {} entries, every invariant holds",
                self.tree_size.unwrap_or(0)
            )
        } else {
            let mut indices: Vec<u64> = self.violations.iter().map(|v| v.index).collect();
            indices.dedup();
            let mut text = String::from("FAIL:");
            if !failed_checks.is_empty() {
                let _ = write!(text, " failed checks: {};", failed_checks.join(", "));
            }
            if !replayed {
                text.push_str(" the log could not be replayed;");
            }
            if !indices.is_empty() {
                let shown: Vec<String> = indices.iter().take(20).map(u64::to_string).collect();
                let more = if indices.len() > 20 { ", …" } else { "" };
                let _ = write!(
                    text,
                    " {} violation(s) at entries {}{more};",
                    self.violations.len(),
                    shown.join(", ")
                );
            }
            text.trim_end_matches(';').to_string()
        };
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mark = |passed: bool| if passed { "PASS" } else { "FAIL" };
        let mut out = String::new();
        let _ = writeln!(out, "ledger      {}", self.url);
        if let Some(origin) = &self.origin {
            let _ = writeln!(out, "origin      {origin}");
        }
        if let Some(size) = self.tree_size {
            let _ = writeln!(out, "tree size   {size}");
        }
        if let Some(root) = &self.root {
            let _ = writeln!(out, "root        {root}");
        }
        if !self.signed_by.is_empty() {
            let _ = writeln!(out, "signed by   {}", self.signed_by.join(", "));
        }
        out.push_str("\nchecks\n");
        for check in &self.checks {
            let _ = writeln!(
                out,
                "  {}  {:<36} {}",
                mark(check.passed),
                check.name,
                check.detail
            );
        }
        if !self.invariants.is_empty() {
            out.push_str("\ninvariants\n");
            for inv in &self.invariants {
                let count = if inv.violations > 0 {
                    format!("  ({} violation(s))", inv.violations)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "  {}  {} {}{count}",
                    mark(inv.passed),
                    inv.number,
                    inv.name
                );
            }
        }
        if !self.violations.is_empty() {
            out.push_str("\nviolations\n");
            for v in &self.violations {
                let _ = writeln!(
                    out,
                    "  entry {}: invariant {} ({}): {}",
                    v.index, v.invariant, v.rule, v.reason
                );
            }
        }
        let _ = writeln!(out, "\n{}", self.summary);
        out
    }
}
