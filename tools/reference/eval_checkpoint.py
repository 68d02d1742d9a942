#!/usr/bin/env python3
"""Perplexity of a FlexOlmo checkpoint directory with Hugging Face transformers.

    python3 tools/reference/eval_checkpoint.py DIR --text a.txt b.txt [--seq-len 256]
        [--experts 0,2] [--top-k K] [--dtype float32|auto] [--json]

DIR is loaded with FlexOlmoForCausalLM.from_pretrained(DIR) and
AutoTokenizer.from_pretrained(DIR) (a tokenizer.json is enough, see NOTES.md).

Exact convention (the Rust evaluator implements the same):

1. Token stream.  For each file, in the order given on the command line, read
   it as UTF-8 and append  encode(text), with [eos] between files (not after the
   last one; each plain-text file is one document), where encode is the tokenizer
   without added special tokens (add_special_tokens=False; a literal
   "<|endoftext|>" inside the text is still matched as that special token, as
   the `tokenizers` library does) and eos is the id of the token
   "<|endoftext|>".  This is the Rust token_stream: documents joined by EOS.
   Call the result t[0..N).

2. Windows.  Non-overlapping in predictions, stride seq_len: window w covers
   t[w*S .. min(w*S + S + 1, N)) (S = seq_len), i.e. up to S+1 tokens; the model
   reads the window minus its last token (positions restart at 0 in every
   window, no cache, no attention mask) and predicts the window minus its first
   token.  The last window may be shorter; a window with fewer than 2 tokens is
   dropped.  Every token t[1..N) is predicted exactly once, t[0] never.

3. Scores.  logits are computed in the model dtype (float32 by default), then
   log_softmax in float64.  nll = -(sum of log p(target)) / (number of
   predicted tokens) in nats/token (token-weighted over all windows, not a mean
   of window means); perplexity = exp(nll).

Output: human-readable lines, or with --json a single JSON object with keys
tokens (number of predicted tokens = N-1), nll, perplexity, plus total_tokens
(N), windows, seq_len, experts, top_k.

--experts 0,2 keeps only those experts (in that order): every layer's router
rows mlp.gate.weight[[0,2]] and expert FFNs 0 and 2, num_experts := 2 (this is
what an opt-out or a purpose restriction does; nothing is retrained).
num_experts_per_tok is clamped to the number of kept experts unless --top-k
sets it explicitly.
"""

import argparse
import json
import math
import sys

import torch
from transformers import AutoTokenizer, FlexOlmoForCausalLM

EOS_TOKEN = "<|endoftext|>"


def build_stream(tokenizer, files):
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if not isinstance(eos, int) or tokenizer.convert_ids_to_tokens(eos) != EOS_TOKEN:
        sys.exit(f"tokenizer has no {EOS_TOKEN} token")
    tokens = []
    for i, path in enumerate(files):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if i > 0:
            tokens.append(eos)
        tokens.extend(tokenizer.encode(text, add_special_tokens=False))
    return tokens


def windows(tokens, seq_len):
    out = []
    for start in range(0, len(tokens) - 1, seq_len):
        w = tokens[start : start + seq_len + 1]
        if len(w) >= 2:
            out.append(w)
    return out


def restrict_experts(model, keep, top_k=None):
    """Keep experts `keep` (list of original indices) in every layer, in that order."""
    cfg = model.config
    n = cfg.num_experts
    if not keep or any(e < 0 or e >= n for e in keep) or len(set(keep)) != len(keep):
        sys.exit(f"--experts must be distinct indices in 0..{n - 1}, got {keep}")
    idx = torch.tensor(keep)
    with torch.no_grad():
        for layer in model.model.layers:
            moe = layer.mlp
            moe.gate.weight = torch.nn.Parameter(moe.gate.weight[idx].clone())
            moe.gate.num_experts = len(keep)
            moe.experts.gate_up_proj = torch.nn.Parameter(moe.experts.gate_up_proj[idx].clone())
            moe.experts.down_proj = torch.nn.Parameter(moe.experts.down_proj[idx].clone())
            moe.experts.num_experts = len(keep)
    cfg.num_experts = len(keep)
    set_top_k(model, top_k if top_k is not None else min(cfg.num_experts_per_tok, len(keep)))


def set_top_k(model, k):
    if not 1 <= k <= model.config.num_experts:
        sys.exit(f"top-k {k} out of range 1..{model.config.num_experts}")
    model.config.num_experts_per_tok = k
    model.num_experts_per_tok = k
    for layer in model.model.layers:
        layer.mlp.gate.top_k = k


@torch.no_grad()
def evaluate(model, tokens, seq_len):
    total_lp = 0.0
    count = 0
    wins = windows(tokens, seq_len)
    for w in wins:
        ids = torch.tensor([w[:-1]])
        logits = model(ids, use_cache=False).logits[0]
        lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        tgt = torch.tensor(w[1:])
        total_lp += lp.gather(-1, tgt[:, None]).sum().item()
        count += len(w) - 1
    nll = -total_lp / count
    return count, len(wins), nll, math.exp(nll)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--text", nargs="+", required=True, metavar="FILE")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--experts", help="comma-separated expert indices to keep, e.g. 0,2")
    ap.add_argument("--top-k", type=int, help="override num_experts_per_tok")
    ap.add_argument("--dtype", default="float32", choices=["float32", "auto"],
                    help="float32 (default, what the Rust side computes in) or the checkpoint's own dtype")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.seq_len < 1:
        sys.exit("--seq-len must be >= 1")

    dtype = torch.float32 if args.dtype == "float32" else "auto"
    model = FlexOlmoForCausalLM.from_pretrained(args.dir, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.dir)
    keep = list(range(model.config.num_experts))
    if args.experts:
        keep = [int(x) for x in args.experts.split(",")]
        restrict_experts(model, keep, args.top_k)
    elif args.top_k is not None:
        set_top_k(model, args.top_k)

    tokens = build_stream(tokenizer, args.text)
    if len(tokens) < 2:
        sys.exit("need at least 2 tokens")
    if max(tokens) >= model.config.vocab_size:
        sys.exit(f"token id {max(tokens)} >= model vocab_size {model.config.vocab_size}")
    count, nwin, nll, ppl = evaluate(model, tokens, args.seq_len)
    result = {
        "tokens": count,
        "nll": nll,
        "perplexity": ppl,
        "total_tokens": len(tokens),
        "windows": nwin,
        "seq_len": args.seq_len,
        "experts": keep,
        "top_k": model.config.num_experts_per_tok,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"tokens:     {count} predicted ({len(tokens)} in stream, {nwin} windows of <= {args.seq_len})")
        print(f"experts:    {keep} (top-k {model.config.num_experts_per_tok})")
        print(f"nll:        {nll:.6f} nats/token")
        print(f"perplexity: {ppl:.4f}")


if __name__ == "__main__":
    main()
