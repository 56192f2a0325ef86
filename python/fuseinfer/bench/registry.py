"""The bench registry: every `fuseinfer bench <suite>` and `fuseinfer tune <suite>` command.

A suite module registers itself when imported:

    register_suite(Suite(name="norm", help="...", add_arguments=add_arguments, run=run,
                         tune=tuner_in("norm_tune", help="...", add_arguments=...),
                         quick_args=("--hidden", "4096", "--tokens", "1", "128", "8192")))

and a family suite file in `bench/suites/` is found by name (SUITE_MODULES). The command
line (`bench/cli.py`) is built from what is registered; it holds no per-suite code.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass

AddArguments = Callable[[argparse.ArgumentParser], None]
Command = Callable[[argparse.Namespace], int]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a suite or tuner that takes no options of its own."""


@dataclass(frozen=True)
class Tuner:
    """`fuseinfer tune <suite>`: searches launch shapes on this GPU and writes its dispatch
    table entries. Always needs a CUDA GPU. `--output` and `--log` are added for every
    tuner; `run` reads them from its namespace."""

    help: str
    run: Command
    add_arguments: AddArguments = no_arguments


def tuner_in(module: str, help: str, add_arguments: AddArguments | None = None) -> Tuner:
    """A Tuner whose search lives in bench/suites/<module>.py: its `tune_command`, and its
    `add_tune_arguments` unless `add_arguments` is given. The module is imported when the
    command runs (or its options are built): a tune module imports its suite's module, so
    the suite cannot import it at load."""

    def tuning() -> object:
        return importlib.import_module(f"{__package__}.suites.{module}")

    def run(args: argparse.Namespace) -> int:
        return tuning().tune_command(args)  # type: ignore[attr-defined]

    def add(parser: argparse.ArgumentParser) -> None:
        tuning().add_tune_arguments(parser)  # type: ignore[attr-defined]

    return Tuner(help=help, run=run, add_arguments=add_arguments or add)


@dataclass(frozen=True)
class Suite:
    """One `fuseinfer bench <name>` command.

    needs_gpu: without a CUDA GPU the command prints one line on stderr and exits with 2
    (kernel suites); False for what runs anywhere (the end-to-end benches, the summary).
    records: the results file its --record appends to (microbench/results/<gpu>/<records>.json),
    None when it records nothing.
    quick_args: the suite's own options for a short representative run (one or two model
    shapes, two or three token counts), what `fuseinfer bench all --quick` runs; every GPU
    kernel suite (kernel_suites) declares one."""

    name: str
    help: str
    run: Command
    add_arguments: AddArguments = no_arguments
    needs_gpu: bool = True
    records: str | None = None
    tune: Tuner | None = None
    quick_args: tuple[str, ...] | None = None


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Add `suite` under its name; registering another suite under a taken name fails."""
    if not suite.name or not suite.name.replace("-", "").isalnum():
        raise ValueError(f"suite name {suite.name!r}: use letters, digits and '-'")
    known = _SUITES.get(suite.name)
    if known is not None and known != suite:
        raise ValueError(f"two suites named {suite.name!r}")
    _SUITES[suite.name] = suite
    return suite


def registered_suites() -> list[Suite]:
    """Every suite, in the order SUITE_MODULES lists their modules."""
    from .suites import SUITE_MODULES

    for module in SUITE_MODULES:
        importlib.import_module(module)
    order = {module: i for i, module in enumerate(SUITE_MODULES)}
    # Import order depends on who imported a suite first; the listing does not.
    return sorted(_SUITES.values(), key=lambda s: order.get(s.run.__module__, len(order)))


def kernel_suites() -> list[Suite]:
    """The GPU kernel suites (norm, rope, attention, ...), what `fuseinfer bench all` runs:
    those that need a GPU and record rows (the ceilings suite measures the device limits
    they report against and records none)."""
    return [s for s in registered_suites() if s.needs_gpu and s.records is not None]


def find_suite(name: str) -> Suite:
    for suite in registered_suites():
        if suite.name == name:
            return suite
    raise KeyError(f"no bench suite {name!r}")
