//! `coordinator`: the operator's command.
//!
//! A thin layer over the library: it parses the command line and calls
//! [`coordinator::server::serve`], [`coordinator::devca`],
//! [`coordinator::anchor`] or [`coordinator::store`].

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use coordinator::{anchor, config, devca, invite, server, store};

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
    /// Run the coordinator: the gRPC API over TLS and the HTTP read side.
    ///
    /// Every setting is a flag, an environment variable, or a key of the
    /// `--config` TOML file (flags and environment win). Migrations are
    /// applied at start; SIGINT or SIGTERM stops it after in-flight calls.
    Serve(config::ServeArgs),
    /// Create a development CA, a server certificate for localhost and
    /// 127.0.0.1, a client certificate (mTLS) and the operator's key.
    DevCa(devca::DevCaArgs),
    /// Invite a contributor: the coordinator signs an invite for its id,
    /// organisation and public key, written to a file the contributor passes
    /// to `contributor-agent register`.
    Invite(invite::InviteArgs),
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
        Command::Serve(args) => {
            init_logging();
            let config = args.resolve()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let running = server::serve(config, server::shutdown_signal()).await?;
                running.wait().await
            })
        }
        Command::DevCa(args) => {
            let out = devca::create(&args)?;
            println!("CA certificate:      {}", out.ca_cert.display());
            println!(
                "server certificate:  {} (key {})",
                out.server_cert.display(),
                out.server_key.display()
            );
            println!(
                "client certificate:  {} (key {})",
                out.client_cert.display(),
                out.client_key.display()
            );
            println!(
                "operator key:        {} (verifier {})",
                out.operator_key.display(),
                out.operator_pub.display()
            );
            Ok(())
        }
        Command::Invite(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let invite = runtime.block_on(invite::issue(&args))?;
            println!(
                "invited {} ({}); give {} to the contributor",
                invite.contributor_id,
                invite.organisation,
                args.out.display()
            );
            Ok(())
        }
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

/// Structured logs to stderr; `RUST_LOG` filters (default `info`), and
/// `TRIBUTARY_LOG_FORMAT=json` switches to one JSON object per line.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TRIBUTARY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
