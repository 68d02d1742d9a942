//! `coordinator`: the operator's command.
//!
//! Today it pretrains the public anchor; the gRPC service (validation, consent
//! ledger, publishing) joins it as `coordinator serve`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod anchor;

/// The Tributary operator's tool.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work on the public anchor model.
    #[command(subcommand)]
    Anchor(AnchorCommand),
}

#[derive(Subcommand, Debug)]
enum AnchorCommand {
    /// Pretrain the dense anchor on public text and compute its public router rows.
    Pretrain(anchor::PretrainArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Anchor(AnchorCommand::Pretrain(a)) => anchor::pretrain_cmd(&a),
    }
}
