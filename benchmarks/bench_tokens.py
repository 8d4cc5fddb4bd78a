"""Token-model head ablation at a Pythia-sized vocabulary: time per checkpoint and per head.

Builds a small GPT-NeoX with Pythia's vocabulary (50,304 tokens; random weights, saved locally with
`save_pretrained`, no download), opens it as a run from outside and times every head ablated alone in every mode
(`ablation.ablated_token_loss`: the heads folded into the batch, the forward stopped at the final LayerNorm, the
next-token loss unembedded a block of rows at a time) against the same ablations read from the bridge's full logits
(one forward per set and batch chunk, `next_token_loss` on its logits: how the analysis did it before). Prints both
times, per checkpoint and per head, and the largest difference.

    python benchmarks/bench_tokens.py [--n 64] [--d-model 128] [--layers 2] [--heads 4]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import transformers
from common import loadavg
from transformer_lens.utilities import get_act_name

from coopinterp.analysis.ablation import ablated_token_loss
from coopinterp.analysis.engine import MODES, head_masks, replacement
from coopinterp.analysis.forwards import LOGITS_BUDGET, next_token_loss
from coopinterp.runs import open_run

PYTHIA_VOCAB = 50_304


@torch.no_grad()
def full_logits_loss(model, batch, head_sets, values) -> torch.Tensor:
    """The reference: each set in its own hooked forwards, full logits in chunks of LOGITS_BUDGET."""
    n, T = batch.tokens.shape
    masks = head_masks(head_sets, model.cfg)
    out = []
    for s in range(len(head_sets)):
        def ablate(z, hook, layer, rows):
            return torch.where(masks[s, layer, None, None, :, None], values[layer][rows], z)

        total = 0.0
        for rows in torch.arange(n).split(max(1, LOGITS_BUDGET // (T * model.cfg.d_vocab))):
            hooks = [(get_act_name("z", layer), partial(ablate, layer=layer, rows=rows))
                     for layer in range(model.cfg.n_layers)]
            logits = model.bridge.run_with_hooks(batch.tokens[rows], fwd_hooks=hooks)
            total += next_token_loss(logits, batch.tokens[rows], batch.first).sum().item()
        out.append(total / (n * (T - batch.first - 1)))
    return torch.tensor(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(vocab_size=PYTHIA_VOCAB, hidden_size=args.d_model, num_hidden_layers=args.layers,
                                     num_attention_heads=args.heads, intermediate_size=4 * args.d_model,
                                     max_position_embeddings=2048)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.GPTNeoXForCausalLM(cfg).save_pretrained(Path(tmp) / "step1000", safe_serialization=True)
        run = open_run(tmp)
        model = run.model(1000)
        (batch,) = run.batches(None, args.n, 0).values()
        heads = [(layer, h) for layer in range(args.layers) for h in range(args.heads)]
        names = [get_act_name("z", layer) for layer in range(args.layers)]
        _, cache = model.run_with_cache(batch, names_filter=names)
        print(f"GPT-NeoX {args.layers} layers x {args.heads} heads, d_model {args.d_model}, vocabulary "
              f"{PYTHIA_VOCAB:,}; {args.n} sequences of {batch.tokens.shape[1]} tokens; threads "
              f"{torch.get_num_threads()}; load average {loadavg()}")
        seconds, diff = {"folded, stopped at the final LayerNorm": 0.0, "full logits per set": 0.0}, 0.0
        for mode in MODES:
            values = [replacement(cache[name], mode) for name in names]
            t0 = time.perf_counter()
            fast = ablated_token_loss(model, batch, [[h] for h in heads], values)
            t1 = time.perf_counter()
            slow = full_logits_loss(model, batch, [[h] for h in heads], values)
            t2 = time.perf_counter()
            seconds["folded, stopped at the final LayerNorm"] += t1 - t0
            seconds["full logits per set"] += t2 - t1
            diff = max(diff, (fast - slow).abs().max().item())
        for name, s in seconds.items():
            print(f"{name}: {s:.1f} s per checkpoint ({len(heads)} heads x {len(MODES)} modes), "
                  f"{s / (len(heads) * len(MODES)):.2f} s per head and mode")
        print(f"max |diff| {diff:.1e}; load average now {loadavg()}")


if __name__ == "__main__":
    main()
