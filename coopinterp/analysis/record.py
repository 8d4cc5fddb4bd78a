"""What an analysis declares about itself: one `Analysis` record per analysis module (its `ANALYSIS`).

Adding an analysis is adding one module under coopinterp/analysis/ with an `ANALYSIS = Analysis(...)`: analyze()
finds it, the CLI parses its options (`--option NAME.KEY=VALUE`), `coopinterp analyses` lists it, and its
headline appears in `analyze`'s summary; its figures are declared beside their plots (coopinterp/plots/figure.py).
The cache key holds `version`: bump it whenever the rows change (tests/test_golden.py fails when an analysis's
output changes under the same version).

Options are a frozen dataclass whose fields are typed `int`, `float`, `bool`, `str`, a `Literal[...]` of
choices, or `X | None`; `parse_options` checks names, types and choices and gives one-line errors.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pandas as pd
from torch import Tensor

from ..errors import ConfigError

# A kind of model names what an analysis can read of it: "exemplar" (the exemplar task's CoopModel: its evaluators,
# its batched engine), "tokens" (any transformer-lens bridge over token ids), "markov" (the Markov task's model, also
# a token model). A model and its run list their kinds, most specific first (`model_kinds`).
ModelKind = str


@dataclass(frozen=True)
class Analysis:
    """An analysis: its row function per kind of model, `rows[kind](model, batches[, options])` -> list of row
    dicts (tables.COLUMNS keys). The registry calls the one of the model's first kind it has (`kind_for`)."""

    name: str
    version: int
    rows: dict[ModelKind, Callable[..., list[dict]]]
    summary: str  # one line for `coopinterp analyses`
    options: type | None = None  # a frozen dataclass of settings (module docstring), None: no settings
    # run only when named (slow, or an optional dependency): on every kind of model (True) or on those named
    opt_in: bool | tuple[ModelKind, ...] = False
    # kinds of model on which it draws its own batches: there the evaluation batches' n and seed are not in its key
    own_data: tuple[ModelKind, ...] = ()
    headline: Callable[[pd.DataFrame], str] | None = None  # its rows at one step -> a short summary
    # An analysis over the whole trajectory: its row functions return one array per checkpoint (kept in the cache
    # beside the tables; keyed by only the options its options class names in `per_step`, if it names them), and
    # `across(arrays by step[, options])` turns the arrays of every step analysed into rows (each with its "step").
    across: Callable[..., list[dict]] | None = None

    def kind_for(self, model_kinds: tuple[ModelKind, ...]) -> ModelKind | None:
        """The first of a model's kinds this analysis has rows for (None: it does not apply)."""
        return next((kind for kind in model_kinds if kind in self.rows), None)

    def applies(self, model_kinds: tuple[ModelKind, ...]) -> bool:
        return self.kind_for(model_kinds) is not None

    def opt_in_on(self, model_kinds: tuple[ModelKind, ...]) -> bool:
        """Whether, on a model of these kinds, it runs only when named."""
        return self.opt_in is True or (self.opt_in is not False and self.kind_for(model_kinds) in self.opt_in)

    def draws_own_data(self, model_kinds: tuple[ModelKind, ...]) -> bool:
        """Whether, on a model of these kinds, it ignores the evaluation batches (so n and seed leave its key)."""
        return self.kind_for(model_kinds) in self.own_data

    def parse(self, given: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked options with defaults filled in (a dict, as the cache key stores them); None without settings."""
        if self.options is None:
            if given is not None:
                raise ConfigError(f"analysis {self.name!r} takes no options")
            return None
        return dataclasses.asdict(parse_options(self.options, given or {}, self.name))

    def compute(self, model, batches: dict, options: dict[str, Any] | None) -> list[dict] | Tensor:
        rows = self.rows[self.kind_for(model.model_kinds)]
        if self.options is None:
            return rows(model, batches)
        return rows(model, batches, self.options(**options))


def _allowed(hint) -> tuple[list, tuple[type, ...], bool]:
    """(Literal choices, plain types, None allowed) of a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        choices, kinds, optional = [], (), False
        for arg in args:
            if arg is type(None):
                optional = True
            else:
                c, k, _ = _allowed(arg)
                choices, kinds = choices + c, kinds + k
        return choices, kinds, optional
    if typing.get_origin(hint) is Literal:
        return list(args), (), False
    return [], (hint,), False


def parse_value(text: str, hint) -> Any:
    """A command-line string as a value of the field's type (the checks come after, in `check_value`)."""
    choices, kinds, optional = _allowed(hint)
    if optional and text.lower() == "none":
        return None
    if bool in kinds:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                pass
    return text


def check_value(value: Any, hint, where: str) -> Any:
    choices, kinds, optional = _allowed(hint)
    if value is None and optional:
        return value
    if choices and value in choices:
        return value
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if any(isinstance(value, k) and (k is bool or not isinstance(value, bool)) for k in kinds):
        return value
    wanted = " or ".join([repr(c) for c in choices] + [k.__name__ for k in kinds] + (["None"] if optional else []))
    raise ConfigError(f"{where} must be {wanted}, got {value!r}")


def parse_options(cls: type, given: dict[str, Any], name: str):
    """An options dataclass from a dict of values (strings from the command line are converted first)."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown {name} option {', '.join(unknown)}; choose from {', '.join(known)}")
    values = {}
    for key, value in given.items():
        value = parse_value(value, hints[key]) if isinstance(value, str) else value
        values[key] = check_value(value, hints[key], f"{name} option {key}")
    return cls(**values)


def describe_options(cls: type | None) -> list[tuple[str, str, str]]:
    """(name, type, default) of every option, for `coopinterp analyses`."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    return [(f.name, _type_name(hints[f.name]), repr(f.default)) for f in dataclasses.fields(cls)]


def _type_name(hint) -> str:
    choices, kinds, optional = _allowed(hint)
    parts = ["|".join(map(str, choices))] if choices else [k.__name__ for k in kinds]
    return " | ".join(parts + (["None"] if optional else []))
