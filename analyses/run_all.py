"""Run every analyses/ script and print a summary of their PASS/FAIL lines (`--fast` for a quick pass).

Exits 1 when any finding FAILs (or errors), 0 when all PASS."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SCRIPTS = ("strategy_order", "transience", "layer0_switch", "layer1_conserved", "copier", "kv_composition",
           "minimal_model", "persistent_icl", "forgetting")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lines = []
    for name in SCRIPTS:
        t0 = time.perf_counter()
        try:
            line = importlib.import_module(name).main(argv)
        except Exception as e:  # one broken finding must not hide the others
            line = f"FAIL {name}: error {type(e).__name__}: {e}".splitlines()[0]
            print(line, flush=True)
        lines.append((name, line, time.perf_counter() - t0))
    print("\nsummary")
    for name, line, seconds in lines:
        print(f"  {name:18s} {line.split()[0]}  ({seconds:.1f} s)")
    return 0 if all(line.startswith("PASS ") for _, line, _ in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
