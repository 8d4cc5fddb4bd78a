"""Wall time of the commands a user runs, idle and beside a busy neighbour, under coopinterp's thread policy and
under torch's old defaults (2 threads, no wait policy): the figures docs/speed.md quotes.

    python benchmarks/bench_commands.py [--run checkpoints/demo] [--repeat 3] [--only help,info,...]

Each command runs in a fresh process (start-up included), `--repeat` times; the median is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import busy_neighbour, loadavg, timed
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"policy": {}, "old default": {"COOPINTERP_THREADS": "2", "OMP_WAIT_POLICY": ""}}
DEMO_STEP = ("import time, torch, torch.nn.functional as F, coopinterp as ci\n"
             "from coopinterp.tasks.exemplar import SingleSeed\n"
             "s = SingleSeed(ci.preset('demo'), 'cpu')\n"
             "for _ in range(20): s.train_step()\n"
             "t = time.perf_counter()\n"
             "for _ in range(200): s.train_step()\n"
             "print((time.perf_counter() - t) / 200)\n")


def commands(run: Path, tmp: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "coopinterp"]
    last = max(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.safetensors"))
    return {
        "help": cli + ["--help"],
        "info": cli + ["info", str(run)],
        "train tiny 300": cli + ["train", "--preset", "tiny", "--steps", "300", "--out", str(tmp / "tiny"),
                                 "--no-progress", "--device", "cpu"],
        "train --seeds 0-3 200": cli + ["train", "--preset", "tiny", "--seeds", "0-3", "--steps", "200", "--out",
                                        str(tmp / "seeds"), "--no-progress", "--device", "cpu"],
        "patch": cli + ["patch", str(run), "--step", str(last)],
        "demo step (s/step)": [sys.executable, "-c", DEMO_STEP],
    }


def run_once(name: str, argv: list[str], env: dict[str, str], tmp: Path) -> float:
    for leftover in ("tiny", "seeds"):
        subprocess.run(["rm", "-rf", str(tmp / leftover)])
    full_env = {k: v for k, v in os.environ.items() if k not in ("COOPINTERP_THREADS", "OMP_NUM_THREADS",
                                                                  "OMP_WAIT_POLICY")}
    full_env.update(env)
    out = {}

    def call() -> None:
        r = subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"{name} failed: {r.stderr.strip().splitlines()[-1:]}")
        out["stdout"] = r.stdout

    seconds = timed(call)
    return float(out["stdout"].strip().splitlines()[-1]) if name.startswith("demo step") else seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "checkpoints" / "demo")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated command names")
    args = ap.parse_args()
    table = Table(title=f"median wall seconds over {args.repeat} runs (load before: {loadavg()})")
    table.add_column("command")
    for policy in POLICIES:
        for where in ("idle", "busy neighbour"):
            table.add_column(f"{policy}, {where}", justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args.run, Path(tmp))
        chosen = args.only.split(",") if args.only else list(cmds)
        for name in chosen:
            cells = []
            for env in POLICIES.values():
                for busy in (False, True):
                    with busy_neighbour(busy):
                        times = [run_once(name, cmds[name], env, Path(tmp)) for _ in range(args.repeat)]
                    cells.append(f"{statistics.median(times):.3g}")
            table.add_row(name, *cells)
            Console().print(f"{name}: {cells}", highlight=False)
    Console().print(table)


if __name__ == "__main__":
    main()
