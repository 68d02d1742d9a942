//! Train the project's byte-level BPE tokenizer and save it in the Hugging
//! Face layout.
//!
//! ```sh
//! cargo run -p tributary-corpus --example train-tokenizer -- \
//!     --data data/slices/public/train.jsonl --vocab-size 4096 --out data/tokenizer
//! ```
//!
//! `--data` takes `.txt` files, `.jsonl` files with a `text` field, or
//! directories of them, and may be repeated.  The sha256 of the written
//! `tokenizer.json` is printed so that a recipe can record it.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use sha2::{Digest, Sha256};
use tributary_corpus::{TextTokenizer, read_documents, tokenizer::TOKENIZER_FILE};

const USAGE: &str = "usage: train-tokenizer --data PATH... [--vocab-size N] --out DIR";

struct Args {
    data: Vec<PathBuf>,
    vocab_size: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut data = Vec::new();
    let mut vocab_size = 4096;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => data.push(PathBuf::from(value()?)),
            "--vocab-size" => {
                let text = value()?;
                vocab_size = text
                    .parse()
                    .map_err(|_| format!("--vocab-size: not a number: {text}"))?;
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    if data.is_empty() {
        return Err(format!("--data is required\n{USAGE}"));
    }
    Ok(Args {
        data,
        vocab_size,
        out,
    })
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let docs = read_documents(&args.data)?;
    let bytes: usize = docs.iter().map(|doc| doc.text.len()).sum();
    eprintln!("training on {} documents, {bytes} bytes", docs.len());
    let tokenizer = TextTokenizer::train(&docs, args.vocab_size)?;
    tokenizer.save(&args.out)?;
    let saved = std::fs::read(args.out.join(TOKENIZER_FILE))?;
    let tokens: usize = docs
        .iter()
        .map(|doc| tokenizer.encode(&doc.text).map(|ids| ids.len()))
        .sum::<Result<_, _>>()?;
    println!(
        "vocab size {}, eos id {}, {tokens} tokens ({:.2} bytes/token)",
        tokenizer.vocab_size(),
        tokenizer.eos_id(),
        bytes as f64 / tokens.max(1) as f64
    );
    println!(
        "sha256 {}  {}",
        hex::encode(Sha256::digest(&saved)),
        args.out.join(TOKENIZER_FILE).display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
