//! The remote subcommands of `contributor-agent` and their dispatch: each
//! parses its flags, runs its call from [`super::calls`] on a tokio runtime
//! and prints [`super::report`]'s text.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tributary_client::ConnectArgs;

use super::{SignedArgs, calls, connect, keys, report, session};

/// `keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); the id goes to `FILE.id`
    /// and the public key (hex) to `FILE.pub`. Never overwrites.
    #[arg(long)]
    pub out: PathBuf,
    /// Your contributor id, as agreed with the operator (lowercase letters,
    /// digits, `-`, `_`, `.`).
    #[arg(long)]
    pub id: String,
}

/// `register`.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// Coordinator, key and operator key.
    #[command(flatten)]
    pub signed: SignedArgs,
    /// The invite from the operator (`coordinator invite` writes it): a file,
    /// or its JSON text.
    #[arg(long)]
    pub invite: String,
    /// Your organisation's name; must be the invite's (default: the invite's).
    #[arg(long)]
    pub organisation: Option<String>,
}

/// `consent`.
#[derive(Subcommand, Debug)]
pub enum ConsentCommand {
    /// Consent to the use of one expert under stated terms (signed by you,
    /// recorded in the ledger); print the consent and its ledger entry.
    Grant {
        /// Coordinator, key and operator key.
        #[command(flatten)]
        signed: SignedArgs,
        /// The terms.
        #[command(flatten)]
        terms: calls::Terms,
    },
    /// List your consents and their state.
    List {
        /// Coordinator, key and operator key.
        #[command(flatten)]
        signed: SignedArgs,
    },
    /// Withdraw a consent now: the coordinator publishes versions without
    /// the expert at once, revokes the versions that held it and erases its
    /// weights; print the receipts.
    Withdraw {
        /// Coordinator, key and operator key.
        #[command(flatten)]
        signed: SignedArgs,
        /// The consent's id.
        consent: String,
    },
}

/// The subcommands that talk to a coordinator.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Create your Ed25519 key (mode 0600) and print its public half, which
    /// you send to the operator to be invited.
    Keygen(KeygenArgs),
    /// Register with the coordinator using the operator's invite.
    Register(RegisterArgs),
    /// Grant, list or withdraw consents.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Upload an expert package (`train`'s output): the coordinator validates
    /// it and, when accepted, publishes a version with it. Prints the
    /// submission's state, every validation step with its figure and the
    /// ledger entries. Grant a consent for the expert first.
    Upload {
        /// Coordinator, key and operator key.
        #[command(flatten)]
        signed: SignedArgs,
        /// The expert package directory (`expert.safetensors`, `manifest.json`).
        #[arg(long)]
        expert: PathBuf,
        /// The submission's id (default: your id + the expert digest's first 16 hex digits).
        #[arg(long)]
        submission: Option<String>,
    },
    /// Show a submission's state and validation results.
    Status {
        /// The coordinator.
        #[command(flatten)]
        connect: ConnectArgs,
        /// The submission's id.
        submission: String,
    },
    /// List the published model versions, newest first, with their experts.
    Versions {
        /// The coordinator.
        #[command(flatten)]
        connect: ConnectArgs,
        /// Only versions published for this purpose, e.g. `research`.
        #[arg(long, default_value = "")]
        purpose: String,
        /// Include versions revoked because a consent they used ended.
        #[arg(long)]
        revoked: bool,
    },
    /// Download a version as a `flex_olmo` checkpoint directory (each file's
    /// size and sha256 checked).
    Download {
        /// The coordinator.
        #[command(flatten)]
        connect: ConnectArgs,
        /// The version (default: the newest in force, for `--purpose` if given).
        #[arg(long)]
        version: Option<u64>,
        /// With no `--version`: the newest version for this purpose.
        #[arg(long, default_value = "")]
        purpose: String,
        /// Directory to write the checkpoint into.
        #[arg(long)]
        out: PathBuf,
        /// Copy the tokenizer files from this checkpoint (e.g. the anchor), so
        /// that `evaluate` and transformers' `AutoTokenizer` load the result.
        #[arg(long)]
        tokenizer_from: Option<PathBuf>,
    },
    /// Every ledger entry about you and your experts (their acceptance, the
    /// versions listing them, their erasure), each with a receipt (inclusion
    /// proof in the latest operator-signed checkpoint) verified against
    /// `--operator-key`.
    Receipts {
        /// Coordinator, key and operator key (required here).
        #[command(flatten)]
        signed: SignedArgs,
    },
}

/// Runs a remote subcommand to completion.
pub fn run(command: RemoteCommand) -> Result<()> {
    if let RemoteCommand::Keygen(a) = &command {
        return keygen(a);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let text = runtime.block_on(execute(command))?;
    print!("{text}");
    Ok(())
}

fn keygen(a: &KeygenArgs) -> Result<()> {
    let public = keys::keygen(&a.out, &a.id)?;
    eprintln!(
        "wrote {} (secret, mode 0600), {} and {}; send the public key below to the operator",
        a.out.display(),
        keys::id_path(&a.out).display(),
        keys::public_path(&a.out).display()
    );
    println!("{}", keys::public_hex(&public));
    Ok(())
}

async fn execute(command: RemoteCommand) -> Result<String> {
    match command {
        RemoteCommand::Keygen(_) => Ok(String::new()),
        RemoteCommand::Register(a) => {
            let s = session(&a.signed).await?;
            let invite = calls::read_invite(&a.invite)?;
            let r = calls::register(&s, &invite, a.organisation.as_deref()).await?;
            let verified = s.check(r.receipt.as_ref())?.is_some();
            Ok(report::registered(&r, verified))
        }
        RemoteCommand::Consent(c) => consent(c).await,
        RemoteCommand::Upload {
            signed,
            expert,
            submission,
        } => {
            let s = session(&signed).await?;
            let status = calls::upload(&s, &expert, submission.as_deref()).await?;
            let verified = s.check(status.decided.as_ref())?.is_some();
            s.check(status.submitted.as_ref())?;
            Ok(report::submission(&status, verified))
        }
        RemoteCommand::Status {
            connect: c,
            submission,
        } => {
            let status = calls::status(&connect(&c).await?, &submission).await?;
            Ok(report::submission(&status, false))
        }
        RemoteCommand::Versions {
            connect: c,
            purpose,
            revoked,
        } => {
            let list = calls::versions(&connect(&c).await?, &purpose, revoked).await?;
            Ok(report::versions(&list))
        }
        RemoteCommand::Download {
            connect: c,
            version,
            purpose,
            out,
            tokenizer_from,
        } => {
            let client = connect(&c).await?;
            let version = match version {
                Some(v) => v,
                None => calls::latest_version(&client, &purpose).await?,
            };
            let files = calls::download(&client, version, &out, tokenizer_from.as_deref()).await?;
            Ok(report::downloaded(version, &files))
        }
        RemoteCommand::Receipts { signed } => {
            let s = session(&signed).await?;
            Ok(report::receipts(&calls::receipts(&s).await?))
        }
    }
}

async fn consent(command: ConsentCommand) -> Result<String> {
    match command {
        ConsentCommand::Grant { signed, terms } => {
            let s = session(&signed).await?;
            let r = calls::grant(&s, &terms).await?;
            let verified = s.check(r.receipt.as_ref())?.is_some();
            Ok(report::granted(&r, verified))
        }
        ConsentCommand::List { signed } => {
            let s = session(&signed).await?;
            Ok(report::consents(&calls::list_consents(&s).await?))
        }
        ConsentCommand::Withdraw { signed, consent } => {
            let s = session(&signed).await?;
            let r = calls::withdraw(&s, &consent).await?;
            let verified = s.check(r.withdrawal.as_ref())?.is_some();
            s.check(r.erasure.as_ref())?;
            Ok(report::withdrawn(&r, verified))
        }
    }
}
