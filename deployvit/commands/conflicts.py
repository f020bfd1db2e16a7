"""Which options go together: one declarative table (`RULES`) per command, checked by one helper.

An option the user typed that the run will ignore is a mistake the user should hear about: `--groups
8` with the sandwich sampler, `--distill-tau` with hard distillation, `--held-out-per-class` without
`--data`. Instead of an `if` per pair in each command, every command states its rules here and calls
`check(command, values)` once its options are resolved (e.g. `--sampler auto` resolved to the
recipe's sampler). A rule names the parameters it constrains and a condition on the others:

- `Only(options, when)`: each of `options`, when given on the command line (optionally only some
  of its values, `values=`), applies only when `when` holds; otherwise one line, exit 2.
- `Needs(option, when)`: when `when` holds, `option` must be given.
- `Excludes(first, second)`: not both (`--arch` and `--timm-model`).

Conditions: `Is(param, *values)`, `IsNot(param, *values)` and `Given(param)`. "Given" means typed by
the user (or set through the environment), not a default: a default never conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import click

from deployvit.errors import DeployvitError


class Is:
    """`param`'s (resolved) value is one of `values`; `label` is how a message names the condition."""

    def __init__(self, param: str, *values: Any, label: str = ""):
        self.param, self.values, self.label = param, values, label

    def holds(self, values: Mapping[str, Any], given: set[str]) -> bool:
        return values.get(self.param) in self.values

    def describe(self, flags: Mapping[str, str]) -> str:
        return self.label or f"{flags.get(self.param, self.param)} {' or '.join(str(v) for v in self.values)}"


class IsNot(Is):
    """`param`'s value is none of `values`."""

    def holds(self, values: Mapping[str, Any], given: set[str]) -> bool:
        return not super().holds(values, given)

    def describe(self, flags: Mapping[str, str]) -> str:
        return self.label or f"{flags.get(self.param, self.param)} other than {' or '.join(str(v) for v in self.values)}"


class Given:
    """`param` is set: typed by the user, or resolved to a value."""

    def __init__(self, param: str):
        self.param = param

    def holds(self, values: Mapping[str, Any], given: set[str]) -> bool:
        return self.param in given or values.get(self.param) not in (None, (), "")

    def describe(self, flags: Mapping[str, str]) -> str:
        return flags.get(self.param, self.param)


Condition = Is | IsNot | Given


@dataclass(frozen=True)
class Only:
    """`options` apply only when `when` holds (only their `values`, when set)."""

    options: tuple[str, ...]
    when: Condition
    values: tuple[Any, ...] | None = None
    why: str = ""  # what the option needs it for, appended to the message

    def problem(self, values: Mapping[str, Any], given: set[str], flags: Mapping[str, str]) -> str | None:
        if self.when.holds(values, given):
            return None
        for name in self.options:
            if name in given and (self.values is None or values.get(name) in self.values):
                shown = f"{flags.get(name, name)}" + (f" {values.get(name)}" if self.values is not None else "")
                now = f" (this run: {_current(self.when, values, flags)})" if type(self.when) is Is and not self.when.label else ""
                return f"{shown} needs {self.when.describe(flags)}{now}" + (f": {self.why}" if self.why else "")
        return None


@dataclass(frozen=True)
class Needs:
    """When `when` holds, `option` must be given."""

    option: str
    when: Condition
    why: str = ""

    def problem(self, values: Mapping[str, Any], given: set[str], flags: Mapping[str, str]) -> str | None:
        if not self.when.holds(values, given) or Given(self.option).holds(values, given):
            return None
        return f"{self.when.describe(flags)} needs {flags.get(self.option, self.option)}" + (f" {self.why}" if self.why else "")


@dataclass(frozen=True)
class Excludes:
    """`first` and `second` are alternatives: given together, one line."""

    first: str
    second: str
    why: str = ""

    def problem(self, values: Mapping[str, Any], given: set[str], flags: Mapping[str, str]) -> str | None:
        if not (Given(self.first).holds(values, given) and Given(self.second).holds(values, given)):
            return None
        return f"give either {flags.get(self.first, self.first)} or {flags.get(self.second, self.second)}, not both" + (
            f": {self.why}" if self.why else "")


def _current(cond: Is, values: Mapping[str, Any], flags: Mapping[str, str]) -> str:
    return f"{flags.get(cond.param, cond.param)} {values.get(cond.param)}"


def _readers(needs: str) -> str:
    """How a message names the scores (and methods) that read a supernet or data, from the registries."""
    from deployvit.search import METHODS, SCORES

    names = [f"--score {s}" for s in SCORES if getattr(SCORES[s], needs)]
    names += [f"--method {m}" for m in METHODS if getattr(METHODS[m], needs, False)]
    return " or ".join(names)


#: export and benchmark share their options (commands/export.py's `_common_options`), so their rules
_EXPORT = (
    Excludes("arch_path", "timm_model"),
    Only(("img_size",), Given("timm_model"), why="an arch fixes its own input size"),
    Excludes("batch_size", "dynamic_batch", why="a static batch, or a dynamic range"),
    Only(("tf32",), Is("precision", "fp32"), why="TF32 rounds fp32 matmuls; other precisions have their own"),
)

#: per command: the rules its options obey (parameter names as click names them)
RULES: dict[str, tuple[Only | Needs | Excludes, ...]] = {
    "search": (  # resolved: the method and score the run uses (an alias and the method's default score applied)
        Only(("supernet_ckpt",), Is("reads_supernet", True, label=_readers("needs_supernet")),
             why="this run's method and score read no checkpoint"),
        Only(("data",), Is("reads_data", True, label=_readers("needs_data")),
             why="only that score reads held-out images; this run's does not"),
    ),
    "export": _EXPORT + (Only(("timing_cache", "workspace"), Is("fmt", "trt"), why="they configure TensorRT's engine build"),),
    "benchmark": _EXPORT,
    "train-supernet": (
        Only(("sandwich_random",), Is("sampler", "sandwich")),
        Only(("groups", "unlock_epochs"), Is("sampler", "multi-arch")),
        Only(("focus_budgets", "focus_epsilon", "focus_update_every"), Is("sampler", "focus")),
    ),
    "retrain": (
        Only(("distill",), IsNot("init", "scratch", label="--init SUPERNET"), why="its largest arch is the teacher"),
        Only(("distill_alpha", "distill_tau"), Given("distill")),
        Only(("distill_tau",), Is("distill", "soft"), why="hard distillation takes the teacher's top-1, no temperature"),
    ),
    "import": (
        Only(("model_args",), Is("kind", "timm"), why="an AutoFormer file holds its own dims"),
        Needs("weights", Is("kind", "autoformer"), why="(supernet-tiny.pth, -small or -base)"),
        Only(("order",), Given("data"), values=("activation",), why="it measures activations on a few batches of your images"),
        Only(("held_out_per_class",), Given("data"), why="the held-out images are carved from --data"),
    ),
}


def given_options(ctx: click.Context | None = None) -> set[str]:
    """The parameters of the current command the user set (command line or environment)."""
    ctx = ctx or click.get_current_context()
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT, click.core.ParameterSource.PROMPT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in sources}


def flags_of(ctx: click.Context | None = None) -> dict[str, str]:
    """parameter name -> its long flag (`sandwich_random` -> `--sandwich-random`)."""
    ctx = ctx or click.get_current_context()
    out = {}
    for param in ctx.command.params:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")] or list(getattr(param, "opts", []))
        if param.name and opts:
            out[param.name] = opts[0]
    return out


def check(command: str, resolved: Mapping[str, Any] | None = None, ctx: click.Context | None = None) -> None:
    """Refuse the first rule of `command` the current invocation breaks, in one line (exit 2).
    `resolved` overrides parameter values with what the command resolved them to (`--sampler auto`
    -> `sandwich`) and adds values that are no parameter (import's source `kind`)."""
    ctx = ctx or click.get_current_context()
    values = {**ctx.params, **(resolved or {})}
    given, flags = given_options(ctx), {**flags_of(ctx), **_EXTRA_FLAGS.get(command, {})}
    for rule in RULES.get(command, ()):
        problem = rule.problem(values, given, flags)
        if problem:
            raise DeployvitError(problem)


#: values a command resolves that are no parameter of their own, as the user would name them
_EXTRA_FLAGS = {"import": {"kind": "--from"}}
