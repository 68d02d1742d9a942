//! `contributor-agent`: the data owner's command-line tool.
//!
//! Runs beside the organisation's private text: trains an expert against the
//! public anchor, evaluates it, and merges experts into `flex_olmo` checkpoints;
//! talks to the coordinator: registers, grants and withdraws consent, uploads,
//! follows versions and verifies receipts. Only the expert's weights ever
//! leave the machine.

use anyhow::Result;
use clap::{Parser, Subcommand};

use contributor_agent::calibration::{self, RecalibrateArgs, RouterStatsArgs};
use contributor_agent::commands::{self, EvaluateArgs, MergeArgs, SoupArgs, TrainArgs};
use contributor_agent::experiment::{self, ExperimentArgs};
use contributor_agent::remote::cli::{self as remote, RemoteCommand};

/// Train, evaluate and merge FlexOlmo experts next to your own data.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an expert on local text against a frozen anchor and write an expert package.
    Train(TrainArgs),
    /// Merge expert packages onto the anchor into a `flex_olmo` checkpoint.
    Merge(MergeArgs),
    /// Score text with a checkpoint: tokens, mean NLL, perplexity, routing shares.
    Evaluate(EvaluateArgs),
    /// Average experts' FFNs with the public FFN into a dense model (the "model soup" baseline).
    Soup(SoupArgs),
    /// Measure your text's router statistics on a merged model (one round of joint calibration).
    RouterStats(RouterStatsArgs),
    /// Refit a merged model's router rows from every contributor's router statistics.
    Recalibrate(RecalibrateArgs),
    /// Reproduce the FlexOlmo comparison on a set of domains (anchor, experts, merge, opt-out, soup).
    Experiment(ExperimentArgs),
    /// Talk to a coordinator (every one of these takes `--url` and `--ca`, or
    /// TRIBUTARY_URL and TRIBUTARY_CA; signed ones `--key` or TRIBUTARY_KEY).
    #[command(flatten)]
    Remote(RemoteCommand),
}

/// mimalloc keeps freed memory for reuse: a training step frees and
/// reallocates many tensor buffers of the same sizes, which glibc's allocator
/// handed back to the kernel and faulted in again (training without the
/// public-loss batch ran about 15 % slower; BENCHMARKS.md, "Expert training").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(a) => commands::train(&a),
        Command::Merge(a) => commands::merge_cmd(&a),
        Command::Evaluate(a) => commands::evaluate_cmd(&a),
        Command::Soup(a) => commands::soup_cmd(&a),
        Command::RouterStats(a) => calibration::router_stats(&a),
        Command::Recalibrate(a) => calibration::recalibrate_cmd(&a),
        Command::Experiment(a) => experiment::run(&a),
        Command::Remote(c) => remote::run(c),
    }
}
