//! `coordinator`: the operator's command.
//!
//! A thin layer over the library: it parses the command line and calls
//! [`coordinator::anchor`] or [`coordinator::store`]. The gRPC service
//! (validation, consent ledger, publishing) joins it as `coordinator serve`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use coordinator::{anchor, store};

/// The Tributary operator's tool.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Work on the public anchor model.
    #[command(subcommand)]
    Anchor(AnchorCommand),
    /// Apply the database migrations (`migrations/`) and exit.
    Migrate(DatabaseArgs),
}

#[derive(Subcommand, Debug)]
enum AnchorCommand {
    /// Pretrain the dense anchor on public text and compute its public router rows.
    Pretrain(anchor::PretrainArgs),
}

/// Where the database is.
#[derive(Args, Debug)]
struct DatabaseArgs {
    /// Postgres connection URL, e.g. `postgres://postgres@127.0.0.1:5432/tributary`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Anchor(AnchorCommand::Pretrain(a)) => anchor::pretrain_cmd(&a),
        Command::Migrate(db) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let pool = store::connect(&db.database_url)
                    .await
                    .context("connecting to the database")?;
                store::migrate(&pool)
                    .await
                    .context("applying the migrations")?;
                println!("migrations applied");
                Ok(())
            })
        }
    }
}
