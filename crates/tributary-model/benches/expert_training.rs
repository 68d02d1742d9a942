//! Expert-training throughput: the FlexOlmo 2-expert configuration that
//! `contributor-agent train` runs, on random tokens, timed after a warm-up.
//!
//! Prints one JSON line. Arguments mirror `tools/reference/bench_expert_training.py`
//! so `scripts/bench-expert-training` can run both side by side:
//! `--vocab --hidden --layers --heads --intermediate --seq-len --batch --steps --warmup --seed`.
//! Threads follow `RAYON_NUM_THREADS`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

/// The allocator `contributor-agent` uses (see its `main.rs`), so the bench measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tributary_model::FlexOlmoConfig;
use tributary_model::device::device_for;
use tributary_model::expert_train::train_expert;
use tributary_model::objective::TrainOptions;
use tributary_model::pretrain::init_anchor;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vocab = arg(&args, "--vocab", 4096);
    let hidden = arg(&args, "--hidden", 128);
    let layers = arg(&args, "--layers", 4);
    let heads = arg(&args, "--heads", 4);
    let inter = arg(&args, "--intermediate", 344);
    let seq = arg(&args, "--seq-len", 256);
    let batch = arg(&args, "--batch", 8);
    let steps = arg(&args, "--steps", 30) as u64;
    let warmup = arg(&args, "--warmup", 5) as u64;
    let seed = arg(&args, "--seed", 0) as u64;

    let config = FlexOlmoConfig::new(vocab, hidden, inter, layers, heads, 1, 1, seq);
    let anchor = init_anchor(&config, seed).unwrap();
    let mut x = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
    let stream: Vec<u32> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect();
    let opts = TrainOptions {
        steps: warmup + steps,
        batch_size: batch,
        seq_len: seq,
        lr: 1e-3,
        warmup: 1,
        seed,
        ..TrainOptions::default()
    };
    // `device_for` also reports a bad TRIBUTARY_MATMUL_KERNEL.
    let device = device_for("flex").unwrap_or_else(|e| {
        eprintln!("expert_training: {e}");
        std::process::exit(2)
    });
    let mut t0 = None;
    let started = Instant::now();
    train_expert(
        &anchor,
        "bench",
        &stream,
        None,
        None,
        &opts,
        &device,
        &mut |s| {
            if s.step == warmup {
                t0 = Some(Instant::now());
            }
        },
    )
    .unwrap();
    let timed = t0.map_or(started.elapsed(), |t| t.elapsed()).as_secs_f64();
    let tokens = (steps as usize * batch * seq) as f64;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{{\"impl\":\"tributary\",\"backend\":\"flex\",\"tokens_per_s\":{:.1},\"step_ms\":{:.1},\"steps\":{steps},\"batch\":{batch},\"seq_len\":{seq},\"threads\":\"{threads}\",\"kernel\":\"{}\"}}",
        tokens / timed,
        1000.0 * timed / steps as f64,
        tributary_model::kernel::kernel()
    );
}
