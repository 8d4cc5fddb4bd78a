"""Seeds of the demo setting: which strategy each learns first, its ICL peak, and its pure IWL.

Reads checkpoints/seeds/seed_*/metrics.parquet (trained together with `coopinterp train --seeds 0-7`) and prints
one row per seed, as a markdown table, on the behaviour curves smoothed over 5 evaluations:
  first    "ICL" if ICL accuracy reaches 0.8 before CIWL accuracy does, "CIWL" if CIWL gets there first
  ICL peak the highest ICL accuracy, its step, and CIWL accuracy at that step
  final    ICL, CIWL and flip accuracy at the last evaluation
  IWL max  the highest pure in-weights accuracy at any evaluation (unsmoothed)
"""
from __future__ import annotations

import sys
from pathlib import Path

from common import REPO, SMOOTH, metrics

from coopinterp.phases import accuracy_curves

SEEDS = REPO / "checkpoints" / "seeds"
REACHED = 0.8


def first_step(curve, level: float) -> int | None:
    above = curve[curve >= level]
    return int(above.index[0]) if len(above) else None


def row(run_dir: Path) -> dict:
    table = metrics(run_dir)
    curves, raw = accuracy_curves(table, smooth=SMOOTH), accuracy_curves(table)
    icl_at, ciwl_at = first_step(curves.icl, REACHED), first_step(curves.ciwl, REACHED)
    first = ("ICL" if ciwl_at is None or (icl_at is not None and icl_at < ciwl_at) else "CIWL") \
        if icl_at or ciwl_at else "neither"
    peak = int(curves.icl.idxmax())
    return {"seed": run_dir.name.removeprefix("seed_"), "first": first, "icl_at": icl_at, "ciwl_at": ciwl_at,
            "icl_peak": curves.icl[peak], "peak_step": peak, "ciwl_at_peak": curves.ciwl[peak],
            "icl_final": curves.icl.iloc[-1], "ciwl_final": curves.ciwl.iloc[-1], "flip_final": curves.flip.iloc[-1],
            "iwl_max": raw.iwl.max(), "last": int(curves.index.max())}


def main(argv: list[str] | None = None) -> str:
    folder = Path(argv[0]) if argv else SEEDS
    rows = [row(d) for d in sorted(folder.glob("seed_*"), key=lambda d: int(d.name.split("_")[1]))]
    if not rows:
        raise SystemExit(f"no seed_* runs under {folder}")
    lines = ["| seed | first to 0.8 | ICL ≥ 0.8 at | CIWL ≥ 0.8 at | ICL peak (step) | CIWL at ICL peak | "
             f"ICL / CIWL / flip at {rows[0]['last']:,} | IWL max |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at = lambda s: f"{s:,}" if s is not None else "never"  # noqa: E731
        lines.append(f"| {r['seed']} | {r['first']} | {at(r['icl_at'])} | {at(r['ciwl_at'])} | "
                     f"{r['icl_peak']:.3f} ({r['peak_step']:,}) | {r['ciwl_at_peak']:.3f} | "
                     f"{r['icl_final']:.3f} / {r['ciwl_final']:.3f} / {r['flip_final']:.3f} | {r['iwl_max']:.3f} |")
    n_icl = sum(r["first"] == "ICL" for r in rows)
    summary = (f"{n_icl} of {len(rows)} seeds reach ICL 0.8 before CIWL does; ICL peaks "
               f"{min(r['icl_peak'] for r in rows):.3f}-{max(r['icl_peak'] for r in rows):.3f}; pure IWL at most "
               f"{max(r['iwl_max'] for r in rows):.3f}")
    print("\n".join(lines) + "\n\n" + summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
