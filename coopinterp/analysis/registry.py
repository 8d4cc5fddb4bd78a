"""The analysis registry: every module of this package that declares an `ANALYSIS` record (record.py), found by
name, so that adding an analysis is adding one module."""
from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .record import Analysis


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, Analysis]:
    """Every analysis of this package, by name: the modules that declare an `ANALYSIS` record."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        record = getattr(importlib.import_module(f"{__package__}.{info.name}"), "ANALYSIS", None)
        if isinstance(record, Analysis):
            found[record.name] = record
    return dict(sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


ORDER = ("behavior", "attention", "composition", "ablation", "path_patching", "clamping", "paper_checks", "llc")


def default_analyses(model_kinds: tuple[str, ...] = ("exemplar",)) -> list[str]:
    """What analyze() runs when not told: every analysis for a model of these kinds but the opt-in ones."""
    return [name for name, a in registry().items() if a.applies(model_kinds) and not a.opt_in_on(model_kinds)]


def check_names(analyses: str | Sequence[str] | None, model_kinds: tuple[str, ...]) -> list[str]:
    """The analyses to run on a model of these kinds: `analyses` checked (unknown or not applying: one-line
    errors), or the default ones."""
    if analyses is None:
        return default_analyses(model_kinds)
    names = [analyses] if isinstance(analyses, str) else list(analyses)
    known = registry()
    unknown = [a for a in names if a not in known]
    if unknown or not names:
        raise ConfigError(f"unknown analysis {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(known)}")
    wrong = [a for a in names if not known[a].applies(model_kinds)]
    if wrong:
        raise ConfigError(f"analysis {', '.join(wrong)} does not apply to this run's {model_kinds[0]} model; "
                          f"choose from {', '.join(default_analyses(model_kinds))}")
    return list(dict.fromkeys(names))
