"""Make a small "run from outside": Hugging Face checkpoints of a tiny GPT-NeoX that learns induction.

coopinterp reads runs it did not train: one folder per step (`step0/`, `step30/`, ...), each written by
`save_pretrained` (config.json + model.safetensors) and loaded offline by TransformerLens's
`TransformerBridge.boot_transformers`. This script makes such a run with plain `transformers` + torch, not
coopinterp's trainer, so the loader meets weights it had no hand in: a 2-layer, 4-head GPT-NeoX (partial rotary on
a quarter of each head's dims, parallel attention + MLP) trained with AdamW on [BOS, x_1..x_h, x_1..x_h], h random
tokens and their exact repeat, next-token loss on every position. h is drawn per batch from 8..24: with one fixed h
the model solves the repeat with purely positional layer-1 heads (they attend h - 1 back even on sequences with no
repeat, and no previous-token head forms), which is not induction. The loss on the repeated half creeps down from
chance (ln 127) for ~850 steps, then drops sharply as a layer-0 previous-token head and a layer-1 induction head
form together (the induction phase change). Checkpoints span before, during and after the drop; training.json
holds the settings and the held-out loss on the repeated half at each saved step. Deterministic given the seed; runs
on one core (~1 min).

    OMP_NUM_THREADS=1 python analyses/make_outside_run.py    # writes checkpoints/induction_neox
    OMP_NUM_THREADS=1 python analyses/make_outside_run.py --verify checkpoints/induction_neox

`--verify DIR` checks every saved step without coopinterp: from HF's own `output_attentions=True` (eager attention)
on held-out sequences with h = 16, each head's previous-token score (mean of A[p, p-1] over p >= 1) and induction
score (mean of A[p, p - h + 1] over the repeated half: attention to the token after the current token's previous
occurrence); and TransformerBridge must boot the folder offline and give HF's logits and attention patterns.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; huggingface_hub reads this at import

import numpy as np
import torch
import transformers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

transformers.utils.logging.disable_progress_bar()

SEED, LR, WEIGHT_DECAY, BATCH, STEPS = 0, 3e-3, 0.01, 32, 1500
VOCAB, BOS, HALVES, HALF = 128, 0, (8, 24), 16  # tokens 1..127; h uniform on HALVES per batch; h = HALF held out
N_EVAL = 256  # held-out sequences (rng seed + 1) for the repeated-half loss and the attention scores
SAVE = [0, 30, 100, 300, 600, 750, 800, 850, 900, 950, 1000, 1200, 1500]
FORMED, TOL = 0.5, 1e-4  # induction score that counts as formed; max |bridge - HF| in logits and patterns


def model_config() -> GPTNeoXConfig:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, rope_parameters=rope,
                         bos_token_id=BOS, eos_token_id=BOS, pad_token_id=BOS)


def repeated_tokens(rng: np.random.Generator, n: int, half: int) -> torch.Tensor:
    """[n, 1 + 2 * half] int64: BOS, then `half` uniform random tokens, then the same tokens again."""
    prefix = rng.integers(1, VOCAB, size=(n, half))
    return torch.from_numpy(np.concatenate([np.full((n, 1), BOS), prefix, prefix], axis=1))


def eval_tokens(seed: int) -> torch.Tensor:
    return repeated_tokens(np.random.default_rng(seed + 1), N_EVAL, HALF)  # [N_EVAL, 1 + 2 * HALF]


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits [batch, pos, vocab], tokens [batch, pos] -> [batch, pos - 1]: column p is the log prob that the
    prediction made at position p gives the token at p + 1."""
    return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def repeated_loss(log_probs: torch.Tensor, half: int = HALF) -> float:
    """Mean loss where the repeat is predictable: positions half+1..2*half-1 (x_1..x_{h-1} of the repeat)
    predicting x_2..x_h."""
    return -log_probs[:, half + 1:].mean().item()


def train(out: Path, steps: int) -> None:
    torch.manual_seed(SEED)
    model = GPTNeoXForCausalLM(model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    data, held_out = np.random.default_rng(SEED), eval_tokens(SEED)
    saves = sorted({s for s in SAVE if s <= steps} | {steps})
    losses, start = {}, time.perf_counter()
    print(f"{'step':>5} {'repeated-half loss':>19} {'s':>6}")
    for step in range(steps + 1):
        if step in saves:
            model.eval()
            with torch.no_grad():
                losses[step] = repeated_loss(token_log_probs(model(held_out).logits, held_out))
            model.save_pretrained(out / f"step{step}", safe_serialization=True)
            print(f"{step:>5} {losses[step]:>19.4f} {time.perf_counter() - start:>6.1f}")
            model.train()
        if step == steps:
            break
        tokens = repeated_tokens(data, BATCH, int(data.integers(HALVES[0], HALVES[1] + 1)))  # [batch, 1 + 2h]
        loss = -token_log_probs(model(tokens).logits, tokens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    settings = {
        "task": f"[BOS={BOS}, x_1..x_h, x_1..x_h] with x uniform on 1..{VOCAB - 1}; h uniform on {HALVES[0]}.."
                f"{HALVES[1]}, drawn once per batch; next-token cross-entropy on every position; data from numpy "
                "default_rng(seed) (h, then the batch, each step); model initialised after torch.manual_seed(seed)",
        "model": "GPTNeoXForCausalLM: 2 layers, 4 heads, d_model 64, d_mlp 128, rotary on 1/4 of each head's dims, "
                 "parallel residual, untied embeddings (stepN/config.json)",
        "save_steps": saves, "seed": SEED, "lr": LR, "weight_decay": WEIGHT_DECAY,
        "optimizer": "torch.optim.AdamW, constant lr", "batch": BATCH, "steps": steps, "vocab": VOCAB, "bos": BOS,
        "half_range": list(HALVES), "dtype": "float32",
        "torch_threads": torch.get_num_threads(), "script": "analyses/make_outside_run.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "repeated_loss": {
            "measured_on": f"{N_EVAL} held-out sequences with h = {HALF} (default_rng(seed + 1)), eval mode; "
                           "positions h+1..2h-1 predicting x_2..x_h",
            "chance": round(float(np.log(VOCAB - 1)), 4),
            "by_step": {f"step{s}": round(v, 4) for s, v in losses.items()}},
    }
    (out / "training.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s; wrote {out}")


def head_scores(attn: torch.Tensor, half: int = HALF) -> tuple[torch.Tensor, torch.Tensor]:
    """attn [layer, batch, head, q, k] on [BOS, x, x] -> (previous-token, induction) scores, each [layer, head].

    previous-token: mean of A[p, p-1] over p >= 1. induction: mean of A[p, p - half + 1] over the repeated half
    p = half+1..2*half (diagonal entry i is query p = i + half - 1, so entries 2.. are the repeated half)."""
    prev = attn.diagonal(-1, -2, -1).mean((1, 3))
    induction = attn.diagonal(1 - half, -2, -1)[..., 2:].mean((1, 3))
    return prev, induction


def verify(run: Path) -> None:
    """Per saved step: HF's repeated-half loss (against training.json), the best induction head and the best layer-0
    previous-token head from HF's attentions, and TransformerBridge's dtype, logits and hook_pattern against HF's.
    Then the formation step (first step where a layer-1 head's induction score passes FORMED), that head, its layer-0
    partner (best previous-token head at the last step) and any layer-1 head that passes FORMED later. Exits non-zero
    if the bridge differs from HF by more than TOL, a loss differs from training.json, or no induction head forms."""
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    settings = json.loads((run / "training.json").read_text())
    logged, tokens = settings["repeated_loss"]["by_step"], eval_tokens(settings["seed"])
    steps = sorted(int(d.name.removeprefix("step")) for d in run.glob("step*") if d.is_dir())
    prevs, inds, failures = [], [], []  # per step: [layer, head] previous-token and induction scores
    print(f"{'step':>5} {'loss':>7} {'logged':>7} {'induction':>11} {'prev-token':>11} {'dtype hf/bridge':>16} "
          f"{'|dlogit|':>9} {'|dpattern|':>10}")
    for step in steps:
        path = run / f"step{step}"
        hf = GPTNeoXForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        out = hf(tokens, output_attentions=True)
        prev, induction = head_scores(torch.stack(out.attentions))  # [layer, head] each
        prevs.append(prev)
        inds.append(induction)
        loss = repeated_loss(token_log_probs(out.logits, tokens))
        bridge = TransformerBridge.boot_transformers(str(path))
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        dlogit = (logits - out.logits).abs().max().item()
        dpattern = max((cache[f"blocks.{layer}.attn.hook_pattern"] - a).abs().max().item()
                       for layer, a in enumerate(out.attentions))
        dtypes = "/".join(str(next(m.parameters()).dtype).removeprefix("torch.") for m in (hf, bridge))
        il, ih = divmod(int(induction.argmax()), induction.shape[1])
        ph = int(prev[0].argmax())
        print(f"{step:>5} {loss:>7.4f} {logged[f'step{step}']:>7.4f} {f'{il}.{ih} {induction[il, ih]:.3f}':>11} "
              f"{f'0.{ph} {prev[0, ph]:.3f}':>11} {dtypes:>16} {dlogit:>9.2e} {dpattern:>10.2e}")
        if max(dlogit, dpattern) > TOL:
            failures.append(f"step{step}: bridge differs from HF (logits {dlogit:.2e}, patterns {dpattern:.2e})")
        if abs(loss - logged[f"step{step}"]) > 1e-3:
            failures.append(f"step{step}: repeated-half loss {loss:.4f}, training.json has {logged[f'step{step}']}")
    prev, ind = torch.stack(prevs)[:, 0], torch.stack(inds)[:, 1]  # [step, head]: layer-0 and layer-1 heads
    passed = ind > FORMED  # [step, head]
    if not passed.any():
        raise SystemExit("FAILED\n" + "\n".join(failures + [f"no layer-1 head's induction score passes {FORMED}"]))
    first = int(passed.any(1).int().argmax())  # index of the formation step
    head, partner = int(ind[first].argmax()), int(prev[-1].argmax())
    later = [f"1.{h} (from step{steps[int(passed[:, h].int().argmax())]})"
             for h in range(ind.shape[1]) if h != head and passed[-1, h]]
    print(f"induction head 1.{head} (score > {FORMED} first at step{steps[first]}), previous-token partner "
          f"0.{partner}{'; later induction heads: ' + ', '.join(later) if later else ''}")
    print(f"step: induction score of 1.{head} / previous-token score of 0.{partner}: "
          + ", ".join(f"{s}: {i:.3f} / {p:.3f}" for s, i, p in zip(steps, ind[:, head], prev[:, partner])))
    if failures:
        raise SystemExit("FAILED\n" + "\n".join(failures))
    print(f"OK: every step boots offline in TransformerBridge and matches HF within {TOL}")


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints/induction_neox")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--verify", type=Path, metavar="DIR", help="check the run in DIR instead of training")
    args = parser.parse_args(argv)
    if args.verify:
        verify(args.verify)
    else:
        train(args.out, args.steps)


if __name__ == "__main__":
    main()
