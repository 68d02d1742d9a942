//! The contributor agent's side of the coordinator's API: keys, registration,
//! consent, upload, status, versions, download and receipts.
//!
//! Each command is an async function that returns what the coordinator
//! answered (so that tests drive the same code as the command line), and
//! [`report`] turns the answers into the lines the command prints.
//!
//! - [`keys`]: the key file, `keygen`.
//! - [`package`]: expert package directory → the ledger's manifest, digests.
//! - [`calls`]: the calls, one small function each.
//! - [`report`]: text output.
//! - [`cli`]: the clap subcommands and their dispatch.

pub mod calls;
pub mod cli;
pub mod keys;
pub mod package;
pub mod report;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tributary_client::{Client, ClientError, ConnectArgs};
use tributary_ledger::{ContributorId, Entry, NoteVerifier};
use tributary_protos::v1;

/// Who the agent acts as.
#[derive(Args, Debug, Clone)]
pub struct IdentityArgs {
    /// Your contributor key file (written by `keygen`).
    #[arg(long, env = "TRIBUTARY_KEY")]
    pub key: PathBuf,
    /// Your contributor id (default: the one `keygen` stored in `KEY.id`).
    #[arg(long, env = "TRIBUTARY_ID")]
    pub id: Option<String>,
}

/// The operator's checkpoint verifier, to verify receipts.
#[derive(Args, Debug, Clone, Default)]
pub struct OperatorKeyArgs {
    /// The operator's checkpoint verifier key (`name+id+base64`, the content
    /// of `operator.pub` from `coordinator dev-ca`), or a file holding it.
    /// When given, every receipt the coordinator returns is verified.
    #[arg(long, env = "TRIBUTARY_OPERATOR_VERIFIER")]
    pub operator_key: Option<String>,
}

impl OperatorKeyArgs {
    /// The verifiers, empty when no key was given.
    pub fn verifiers(&self) -> Result<Vec<NoteVerifier>> {
        let Some(text) = &self.operator_key else {
            return Ok(Vec::new());
        };
        let path = std::path::Path::new(text);
        let key = if path.is_file() {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the operator key {}", path.display()))?
        } else {
            text.clone()
        };
        Ok(vec![NoteVerifier::from_key_string(key.trim()).context(
            "--operator-key is not a verifier key string (name+id+base64) or a file holding one",
        )?])
    }
}

/// Flags of a command that acts as a contributor.
#[derive(Args, Debug, Clone)]
pub struct SignedArgs {
    /// The coordinator.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Who acts.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Whom to trust for receipts.
    #[command(flatten)]
    pub operator: OperatorKeyArgs,
}

/// A connection that signs as a contributor.
pub struct Session {
    /// The signing client.
    pub client: Client,
    /// The contributor it signs as.
    pub contributor: ContributorId,
    /// Receipt verifiers (empty: receipts are not verified).
    pub verifiers: Vec<NoteVerifier>,
}

/// Turns a failed call into an error that names the call, the gRPC status and
/// the coordinator's reason code.
pub fn failed(call: &'static str) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |e| anyhow::anyhow!("{call} failed: {}", e.explain())
}

/// Connects (no signer).
pub async fn connect(args: &ConnectArgs) -> Result<Client> {
    args.connect()
        .await
        .map_err(failed("connecting"))
        .with_context(|| format!("reaching the coordinator at {}", args.url))
}

/// Connects and signs as the contributor of `args`.
pub async fn session(args: &SignedArgs) -> Result<Session> {
    let signer = keys::signer(&args.identity.key, args.identity.id.as_deref())?;
    let contributor = keys::contributor_id(&args.identity.key, args.identity.id.as_deref())?;
    let verifiers = args.operator.verifiers()?;
    let client = connect(&args.connect).await?.with_signer(signer);
    Ok(Session {
        client,
        contributor,
        verifiers,
    })
}

impl Session {
    /// Verifies `receipt` when the session has verifiers; returns its entry
    /// (`None` when there is no receipt or nothing to verify against).
    pub fn check(&self, receipt: Option<&v1::Receipt>) -> Result<Option<Entry>> {
        if self.verifiers.is_empty() || receipt.is_none() {
            return Ok(None);
        }
        tributary_client::verify_receipt(receipt, &self.verifiers)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("the coordinator's receipt does not verify: {e}"))
    }
}
