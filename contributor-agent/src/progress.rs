//! Progress bars for long-running work (training, evaluation).

use indicatif::{ProgressBar, ProgressStyle};
use tributary_model::objective::StepInfo;

/// A bar for a training run: steps, loss, tokens/s and ETA.
pub fn training_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// Updates a training bar from a step report; held-out evaluations are also printed.
pub fn on_step(bar: &ProgressBar, info: &StepInfo, smoothed: &mut Option<f64>) {
    let s = match *smoothed {
        Some(prev) => 0.9 * prev + 0.1 * info.loss,
        None => info.loss,
    };
    *smoothed = Some(s);
    bar.set_position(info.step);
    let msg = format!(
        "loss {s:.3}  {:.0} tok/s  lr {:.1e}",
        info.tokens_per_s, info.lr
    );
    if bar.is_hidden() {
        // Not a terminal (a log file, CI): print a line every 5 % of the run instead.
        let every = (info.total / 20).max(1);
        if info.step.is_multiple_of(every) || info.step == info.total {
            eprintln!("step {}/{}: {msg}", info.step, info.total);
        }
    }
    bar.set_message(msg);
    if let Some(e) = info.eval_loss {
        bar.println(format!(
            "step {}: held-out loss {e:.4} (perplexity {:.2})",
            info.step,
            e.exp()
        ));
        if bar.is_hidden() {
            eprintln!(
                "step {}: held-out loss {e:.4} (perplexity {:.2})",
                info.step,
                e.exp()
            );
        }
    }
}

/// A bar counting evaluation windows.
pub fn eval_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} windows  ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}
