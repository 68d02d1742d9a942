//! `coordinator invite`: the operator invites a contributor's key under a
//! contributor id and organisation, and writes the invite file that the
//! contributor passes to `contributor-agent register`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tributary_client::{ConnectArgs, Invite, RequestSigner, parse_public_key};
use tributary_ledger::ContributorId;

use crate::devca;

/// Arguments of `coordinator invite`.
#[derive(clap::Args, Debug, Clone)]
pub struct InviteArgs {
    /// The coordinator.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The operator's key file (`operator.key` from `dev-ca`); it signs the request and the invite.
    #[arg(long, env = "TRIBUTARY_OPERATOR_KEY")]
    pub operator_key: PathBuf,
    /// The contributor id to invite (lowercase letters, digits, `-`, `_`, `.`).
    #[arg(long)]
    pub id: String,
    /// The contributor's organisation name, as it will stand in the ledger.
    #[arg(long)]
    pub organisation: String,
    /// The contributor's Ed25519 public key: 64 hex digits (what
    /// `contributor-agent keygen` prints) or base64.
    #[arg(long)]
    pub public_key: String,
    /// Where to write the invite (JSON) for the contributor.
    #[arg(long)]
    pub out: PathBuf,
}

/// Asks the coordinator to sign the invite and writes it to `args.out`.
pub async fn issue(args: &InviteArgs) -> Result<Invite> {
    let key = devca::operator_signing_key(&args.operator_key)?;
    let contributor = ContributorId::new(args.id.as_str())
        .with_context(|| format!("contributor id {:?}", args.id))?;
    let public_key = parse_public_key(&args.public_key)?;
    let client = args
        .connect
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {}", args.connect.url, e.explain()))?
        .with_signer(RequestSigner::operator(key));
    let signature = client
        .create_invite(&contributor, &args.organisation, &public_key)
        .await
        .map_err(|e| anyhow::anyhow!("create invite failed: {}", e.explain()))?;
    let invite = Invite::new(
        contributor,
        args.organisation.clone(),
        public_key,
        signature,
    );
    std::fs::write(&args.out, invite.to_json())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(invite)
}
