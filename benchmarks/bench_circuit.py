"""What `edges` + `circuit` cost per checkpoint at Pythia-70m's shape, against the floor of the forwards and
backwards they need, timed in this process (threads: OMP_NUM_THREADS).

Builds a GPT-NeoX shaped like Pythia-70m (6 layers x 8 heads, d_model 512, vocabulary 50,304, parallel residual,
rotary; random weights, two step folders written by `save_pretrained` in a temporary directory, no download) and
analyses each checkpoint with `edges` and `circuit` (default options: EAP-IG, its default steps) on `--n`
induction pairs (`--source induction`), one worker, nothing cached. The floor is the same number of bare forwards
(the bridge without hooks, stopped before the unembedding) and forward + backward passes (the logit difference
from two unembedding columns, its gradient down to the embeddings) on the same pairs: 2 forwards (clean, corrupted),
`steps` forward + backward, and one forward per circuit evaluated (one holding a path from the input to the
logits). Prints seconds and the ratio.

    python benchmarks/bench_circuit.py [--n 64] [--steps 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from common import loadavg

import coopinterp.analysis as an
import coopinterp.analysis.circuit as circuit
from coopinterp.analysis.edges import IG_STEPS
from coopinterp.analysis.forwards import stopped_at
from coopinterp.analysis.graph import metric_values
from coopinterp.runs import open_run


def pythia70m_run(root: Path, steps: int) -> Path:
    cfg = transformers.GPTNeoXConfig(vocab_size=50_304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                     intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                                     use_parallel_residual=True, bos_token_id=0, eos_token_id=0)
    for step in range(steps):
        torch.manual_seed(step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers.GPTNeoXForCausalLM(cfg).save_pretrained(root / f"step{step}")
    return root


def floor_passes(model, pairs, repeats: int = 3) -> tuple[float, float]:
    """Seconds of one bare forward and of one forward + backward of the logit difference, on all the pairs (the
    fastest of `repeats`: single timings here varied by up to 1.8x)."""
    def forward() -> None:
        with torch.no_grad():
            stopped_at(model, pairs.clean, "unembed.hook_in")

    def forward_backward() -> None:
        start = {}

        def leaf(x, hook):
            start["x"] = x.detach().requires_grad_()
            return start["x"]

        with torch.enable_grad():
            hidden = stopped_at(model, pairs.clean, "unembed.hook_in", [("blocks.0.hook_resid_pre", leaf)])
            metric_values(model, hidden, pairs, "logit_diff").mean().backward()

    def fastest(run) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return min(times)

    return fastest(forward), fastest(forward_backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="checkpoints")
    args = parser.parse_args()
    counted = {"circuits": 0}
    evaluate = circuit.circuit_metrics

    def counting(model, graph, ends, keep, metric):
        counted["circuits"] += int(graph.connects(keep).sum())  # the others take no forward
        return evaluate(model, graph, ends, keep, metric)

    circuit.circuit_metrics = counting
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(pythia70m_run(Path(tmp) / "pythia70m", args.steps))
        model = run.model(run.steps[0])
        pairs = run.batches("induction", args.n, 0)["induction"].contrast
        print(f"load {loadavg()}  torch threads {torch.get_num_threads()}  n {args.n}  IG steps {IG_STEPS}")
        for step in run.steps:
            counted["circuits"] = 0
            t0 = time.perf_counter()
            df = an.analyze(run, ["edges", "circuit"], steps=[step], n=args.n, source="induction", progress=False,
                            workers=1, cache_dir=Path(tmp) / "cache", recompute=True)
            took = time.perf_counter() - t0
            forward, both = floor_passes(model, pairs)
            floor = (2 + counted["circuits"]) * forward + IG_STEPS * both
            size = df[df.metric == "circuit_size"].value.iloc[0]
            print(f"step {step}: edges + circuit {took:.1f} s; floor {floor:.1f} s ({2 + counted['circuits']} "
                  f"forwards x {forward:.2f} s + {IG_STEPS} forward+backward x {both:.2f} s); ratio "
                  f"{took / floor:.2f}; circuit {size:.0f} edges; load {loadavg()}")


if __name__ == "__main__":
    main()
