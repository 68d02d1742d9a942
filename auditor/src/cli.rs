//! The command line: `auditor verify` and `auditor lookup`, with their exit
//! codes — 0 when everything holds (or the subject was found), 1 when the
//! audit fails (or the subject is unknown), 2 when the audit could not run.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::client::TileClient;
use crate::lookup::{Subject, lookup, to_text};
use crate::report::Report;
use crate::verify::{VerifyOptions, download_and_replay, parse_key, verify};

/// Verifies a Tributary consent ledger served as C2SP tlog-tiles.
#[derive(Debug, Parser)]
#[command(name = "auditor", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the ledger is and whom to trust.
#[derive(Debug, Args)]
pub struct Source {
    /// The log's URL prefix, e.g. `http://127.0.0.1:8081`.
    #[arg(long, env = "AUDITOR_URL")]
    pub url: String,
    /// The operator's checkpoint verifier key string (`name+id+base64key`), obtained out of band.
    #[arg(long, env = "AUDITOR_KEY")]
    pub key: String,
    /// A PEM file of CA certificates to trust for https (instead of the webpki roots).
    #[arg(long, env = "AUDITOR_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download the whole log, verify it against the signed checkpoint and
    /// replay every entry; exits 1 on any failure.
    Verify {
        /// Where the ledger is.
        #[command(flatten)]
        source: Source,
        /// A file keeping the last checkpoint accepted: the next run fails if
        /// the log is not an extension of it.
        #[arg(long, env = "AUDITOR_STATE")]
        state: Option<PathBuf>,
    },
    /// Print what the ledger says about a contributor, an expert or a version.
    Lookup {
        /// Where the ledger is.
        #[command(flatten)]
        source: Source,
        /// What to look up.
        #[command(flatten)]
        subject: SubjectArgs,
    },
}

/// Exactly one subject.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SubjectArgs {
    /// A contributor id.
    #[arg(long)]
    pub contributor: Option<String>,
    /// An expert digest (64 hex digits).
    #[arg(long)]
    pub expert: Option<String>,
    /// A version number.
    #[arg(long)]
    pub version: Option<u64>,
}

impl SubjectArgs {
    fn subject(&self) -> Option<Subject> {
        match (&self.contributor, &self.expert, self.version) {
            (Some(c), _, _) => Some(Subject::Contributor(c.clone())),
            (_, Some(e), _) => Some(Subject::Expert(e.clone())),
            (_, _, Some(v)) => Some(Subject::Version(v)),
            _ => None,
        }
    }
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let progress = std::io::stderr().is_terminal();
    match cli.command {
        Command::Verify { source, state } => {
            let report = verify(&VerifyOptions {
                url: source.url,
                key: source.key,
                state,
                ca: source.ca,
                progress: progress && !source.json,
            })?;
            print_report(&report, source.json)?;
            Ok(report.passed)
        }
        Command::Lookup { source, subject } => {
            let subject = subject
                .subject()
                .context("one of --contributor, --expert, --version is required")?;
            let (verifier, operator) = parse_key(&source.key)?;
            let client = TileClient::new(&source.url, source.ca.as_deref())?;
            let mut report = Report {
                url: source.url.clone(),
                ..Report::default()
            };
            let audited =
                match download_and_replay(&client, &verifier, operator, progress, &mut report) {
                    Ok(audited) => audited,
                    Err(error) => anyhow::bail!("cannot read the ledger: {error}"),
                };
            if !audited.replay.is_clean() || !audited.downloaded.mismatches.is_empty() {
                eprintln!(
                    "warning: the ledger fails verification ({} violation(s)); run `auditor verify`",
                    audited.replay.violations.len() + audited.downloaded.mismatches.len()
                );
            }
            let answer = lookup(&audited.replay.state, &subject)?;
            match &answer {
                Some(value) if source.json => println!("{}", serde_json::to_string_pretty(value)?),
                Some(value) => print!("{}", to_text(value)),
                None => eprintln!("the ledger does not mention {subject:?}"),
            }
            Ok(answer.is_some())
        }
    }
}

/// The `auditor` command.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("auditor: {error:#}");
            ExitCode::from(2)
        }
    }
}
