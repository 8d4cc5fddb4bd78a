"""What a token model's default analyses cost against one forward + backward on the same data, and path patching
(opt-in on token models) started at the receiver's layer against the exhaustive way it ran before.

Builds GPT-NeoX models with Pythia's vocabulary (50,304 tokens; random weights saved with `save_pretrained` in a
temporary directory, no download): a 3-layer, 4-head, d_model 64 one and one shaped like Pythia-70m (6 layers x 8
heads, d_model 512). For each it times, in this process and on one thread: one forward + backward of the model's
next-token loss on the evaluation batch (the reference), each default analysis of one checkpoint, and all of them
together (`analyze`, one worker, nothing cached); then, on the small model, `path_patching` against the old way
(the patched q, k and v from a full forward, every patched set run from the embedding). Prints seconds and
multiples of the reference.

    python benchmarks/bench_token_defaults.py [--n 8] [--models small,pythia70m] [--no-path-patching]
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

import coopinterp.analysis as an
from coopinterp.analysis.engine import replacement
from coopinterp.analysis.forwards import TOKENS_PER_CALL, final_stream, next_token_loss, stream_loss, token_run
from coopinterp.analysis.patching import COMPONENTS, token_rows as path_patching_rows
from coopinterp.runs import open_run

PYTHIA_VOCAB = 50_304
MODELS = {"small": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256),
          "pythia70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048)}


def forward_backward(model, batch) -> float:
    """Seconds of one forward of the bridge (full logits) and one backward of the mean next-token loss to every
    weight (as a training step computes it)."""
    params = list(model.bridge.parameters())
    kept = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    t0 = time.perf_counter()
    loss = next_token_loss(model.bridge(batch.tokens), batch.tokens, batch.first).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    for p, k in zip(params, kept):
        p.grad = None
        p.requires_grad_(k)
    return seconds


@torch.no_grad()
def exhaustive_path_patching(model, batches) -> list[float]:
    """The way path patching ran before: for each (sender, receiver layer) the patched q, k and v from a full
    forward (logits included), then every (component, receiver head) set folded into the batch and run from the
    embedding to the final LayerNorm. Returns the losses in `token_rows`' order."""
    cfg, out = model.cfg, []
    sets = [(c, h) for c in COMPONENTS for h in range(cfg.n_heads)]
    for batch in batches.values():
        n, T = batch.tokens.shape
        token_run(model, batch)
        _, cache = model.run_with_cache(batch, names_filter=[get_act_name("z", l) for l in range(cfg.n_layers)])
        for src_layer in range(cfg.n_layers - 1):
            z = cache[get_act_name("z", src_layer)]
            for src_head in range(cfg.n_heads):
                delta = (replacement(z, "mean") - z)[..., src_head, :] @ model.bridge.W_O[src_layer, src_head]
                for layer in range(src_layer + 1, cfg.n_layers):
                    names = {c: get_act_name(c, layer) for c in COMPONENTS}
                    add = [(get_act_name("resid_pre", layer), lambda resid, hook: resid + delta)]
                    with model.bridge.hooks(fwd_hooks=add):
                        _, patched = model.bridge.run_with_cache(batch.tokens, names_filter=list(names.values()))
                    per_call = max(1, TOKENS_PER_CALL // (n * T))
                    for first in range(0, len(sets), per_call):
                        group = sets[first: first + per_call]

                        def swap(x, hook, c, group=group):
                            x = x.unflatten(0, (len(group), n)).clone()
                            per_kv = cfg.n_heads // x.shape[-2]
                            for s, (comp, head) in enumerate(group):
                                if comp == c:
                                    kv = head if c == "q" else head // per_kv
                                    x[s, :, :, kv] = patched[names[c]][:, :, kv]
                            return x.flatten(0, 1)

                        tokens = batch.tokens.repeat(len(group), 1)
                        hidden = final_stream(model, tokens, [(names[c], partial(swap, c=c)) for c in COMPONENTS])
                        out += stream_loss(model, hidden, tokens, batch.first).view(len(group), -1).mean(-1).tolist()
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench(name: str, n: int, path_patching: bool) -> None:
    cfg = transformers.GPTNeoXConfig(vocab_size=PYTHIA_VOCAB, max_position_embeddings=2048, **MODELS[name])
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        transformers.GPTNeoXForCausalLM(cfg).save_pretrained(Path(tmp) / "run" / "step1000", safe_serialization=True)
        run = open_run(Path(tmp) / "run")
        model = run.model(1000)
        batches = run.batches(None, n, 0)
        (batch,) = batches.values()
        forward_backward(model, batch)  # warm-up
        ref = min(forward_backward(model, batch) for _ in range(3))
        print(f"\nGPT-NeoX {name}: {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, d_model "
              f"{cfg.hidden_size}, vocabulary {PYTHIA_VOCAB:,}; {n} sequences of {batch.tokens.shape[1]} tokens; "
              f"threads {torch.get_num_threads()}; load average {loadavg()}")
        print(f"  one forward + backward: {ref:.2f} s")
        names = an.default_analyses(run.model_kinds)
        for analysis in names:
            seconds, _ = timed(lambda: an.analyze(run, [analysis], steps=[1000], n=n, workers=1, progress=False,
                                                  cache_dir=Path(tmp) / analysis))
            print(f"  {analysis:<13} {seconds:7.1f} s = {seconds / ref:6.1f} x")
        seconds, _ = timed(lambda: an.analyze(run, steps=[1000], n=n, workers=1, progress=False,
                                              cache_dir=Path(tmp) / "all"))
        print(f"  all defaults  {seconds:7.1f} s = {seconds / ref:6.1f} x  ({', '.join(names)})")
        if path_patching:
            new, rows = timed(lambda: path_patching_rows(model, batches))
            old, losses = timed(lambda: exhaustive_path_patching(model, batches))
            got = [r["value"] for r in rows if r["metric"] == "loss"]
            diff = max(abs(a - b) for a, b in zip(got, losses))
            print(f"  path_patching from the receiver's layer {new:.1f} s, exhaustive {old:.1f} s: "
                  f"{old / new:.2f}x faster ({new / ref:.1f} x the reference); largest difference {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--models", default="small,pythia70m")
    parser.add_argument("--no-path-patching", action="store_true", help="skip the path-patching comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        bench(name, args.n, not args.no_path_patching and name == "small")


if __name__ == "__main__":
    main()
