//! Building the model a command runs: a checkpoint, optionally with expert
//! packages merged in memory, optionally restricted to a subset of experts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tributary_model::checkpoint::file_sha256;
use tributary_model::merge::{merge, select_experts};
use tributary_model::{Checkpoint, ExpertPackage};

/// Default number of experts per token for merged models.
pub const DEFAULT_TOP_K: usize = 2;

/// SHA-256 of a checkpoint's `model.safetensors`: the anchor digest experts record.
pub fn anchor_digest(dir: &Path) -> Result<String> {
    file_sha256(&dir.join("model.safetensors")).context("hashing the anchor")
}

/// Loads expert packages, with the path in any error.
pub fn load_experts(dirs: &[PathBuf]) -> Result<Vec<ExpertPackage>> {
    dirs.iter()
        .map(|d| {
            ExpertPackage::load(d)
                .with_context(|| format!("loading expert package {}", d.display()))
        })
        .collect()
}

/// `model_dir` (+ `experts` merged onto it, when it is an anchor), restricted to
/// `subset` (indices, 0 = public) and with `top_k` experts per token when given.
pub fn assemble(
    model_dir: &Path,
    experts: &[PathBuf],
    subset: Option<&[usize]>,
    top_k: Option<usize>,
) -> Result<Checkpoint> {
    let mut ckpt = Checkpoint::load(model_dir)
        .with_context(|| format!("loading checkpoint {}", model_dir.display()))?;
    if !experts.is_empty() {
        let digest = anchor_digest(model_dir)?;
        let pkgs = load_experts(experts)?;
        ckpt = merge(&ckpt, &digest, &pkgs, top_k.unwrap_or(DEFAULT_TOP_K))
            .context("merging the experts")?;
    }
    if let Some(keep) = subset {
        let k = top_k.unwrap_or(ckpt.config.num_experts_per_tok);
        ckpt = select_experts(&ckpt, keep, k).context("selecting experts")?;
    } else if let Some(k) = top_k {
        ckpt.config.num_experts_per_tok = k.min(ckpt.config.num_experts);
    }
    if let Some(k) = top_k {
        note_if_top_k_exceeds(k, ckpt.config.num_experts);
    }
    Ok(ckpt)
}

/// Tells the user, on stderr, that `--top-k` asked for more experts than
/// the model has (every token then uses all of them).
pub fn note_if_top_k_exceeds(top_k: usize, experts: usize) {
    if top_k > experts {
        eprintln!(
            "note: --top-k {top_k} is more than the {experts} experts of this model; every token uses all of them"
        );
    }
}

/// Parses `--top-k`: the experts each token is routed to, at least one.
pub fn parse_top_k(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("a token is routed to at least one expert: use 1 or more".to_owned()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!(
            "{s:?} is not a number of experts (expected e.g. 2)"
        )),
    }
}

/// A list of expert indices given as `0,2,3` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertList(pub Vec<usize>);

/// Parses `0,2,3` into expert indices.
pub fn parse_expert_list(s: &str) -> Result<ExpertList, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| format!("{p:?} is not an expert index (expected e.g. 0,2,3)"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ExpertList)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_a_positive_number_of_experts() {
        assert_eq!(parse_top_k("2"), Ok(2));
        assert_eq!(parse_top_k(" 3 "), Ok(3));
        let zero = parse_top_k("0").unwrap_err();
        assert!(zero.contains("at least one expert"), "{zero}");
        for bad in ["x", "-1", "1.5", ""] {
            let err = parse_top_k(bad).unwrap_err();
            assert!(err.contains("is not a number of experts"), "{bad:?}: {err}");
        }
    }
}
