"""The bench registry: every `fuseinfer bench` and `fuseinfer tune` command comes from a
registered suite, the CLI lists them all, GPU-only ones behave the same without a GPU, and
the end-to-end benches sit above runtime/ and server/."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from fuseinfer.bench import cli as bench_cli
from fuseinfer.bench.registry import Suite, find_suite, register_suite, registered_suites
from fuseinfer.bench.suites import SUITE_MODULES
from fuseinfer.cli import build_parser, main

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fuseinfer"
SUITES = registered_suites()
GPU_ONLY = [s.name for s in SUITES if s.needs_gpu]
TUNERS = [s.name for s in SUITES if s.tune is not None]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_suite_is_complete_and_named_once():
    names = [s.name for s in SUITES]
    assert len(names) == len(set(names)) and len(names) >= 8
    for suite in SUITES:
        assert suite.help and callable(suite.run) and callable(suite.add_arguments)
        assert suite.tune is None or (suite.tune.help and callable(suite.tune.run))
        assert find_suite(suite.name) is suite


def test_suites_come_from_the_listed_modules_in_list_order():
    modules = [s.run.__module__ for s in SUITES]
    assert set(modules) <= set(SUITE_MODULES)
    # family suites are found in bench/suites/ by file name, with no list to edit
    for family in ("norm", "rope", "attention"):
        assert f"fuseinfer.bench.suites.{family}" in modules
    listed = [m for m in modules if m in SUITE_MODULES]
    assert listed == sorted(listed, key=SUITE_MODULES.index)


def test_the_cli_has_one_command_per_suite_and_tuner():
    commands = _subcommands(build_parser())
    assert list(_subcommands(commands["bench"])) == [s.name for s in SUITES]
    assert list(_subcommands(commands["tune"])) == TUNERS
    for name, parser in _subcommands(commands["tune"]).items():
        assert {"--output", "--log"} <= _options(parser), name


def test_bench_list_shows_every_suite(capsys):
    assert main(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [s.name for s in SUITES]
    for line, suite in zip(lines, SUITES, strict=True):
        needs, records = line.split()[1:3]
        assert needs == ("gpu" if suite.needs_gpu else "any")
        assert records == (f"{suite.records}.json" if suite.records else "-")


def test_a_suite_that_records_has_the_record_option():
    benches = _subcommands(_subcommands(build_parser())["bench"])
    for suite in SUITES:
        assert ("--record" in _options(benches[suite.name])) == (suite.records is not None), \
            suite.name


def test_the_end_to_end_benches_and_the_summary_run_without_a_gpu():
    anywhere = {s.name for s in SUITES if not s.needs_gpu}
    assert {"offline", "latency", "serving", "summary"} <= anywhere
    assert {"norm", "rope", "attention", "ceilings"} <= set(GPU_ONLY)


@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_suite_without_a_gpu_prints_one_line_and_exits_2(name, monkeypatch, capsys):
    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: False)
    assert main(["bench", name]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"fuseinfer bench {name}: no CUDA GPU found, and this "
                                "command needs one."]


@pytest.mark.parametrize("name", TUNERS)
def test_tuner_without_a_gpu_prints_one_line_and_exits_2(name, monkeypatch, capsys):
    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: False)
    assert main(["tune", name]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"fuseinfer tune {name}: no CUDA GPU found, and this "
                                "command needs one."]


def test_register_suite_refuses_a_second_suite_under_a_taken_name():
    taken = SUITES[0]
    assert register_suite(taken) is taken  # the same suite again (a re-import) is fine
    with pytest.raises(ValueError, match=f"two suites named '{taken.name}'"):
        register_suite(Suite(name=taken.name, help="another", run=lambda args: 0))
    with pytest.raises(ValueError, match="use letters, digits and '-'"):
        register_suite(Suite(name="no spaces", help="x", run=lambda args: 0))


def test_every_family_with_a_dispatch_table_has_a_suite_file_named_after_it():
    """A newcomer finds an op family's bench by its name: bench/suites/<family>.py, as
    ops/<family>/ (store_kv_cache: ops/kvcache/ and bench/suites/kvcache.py)."""
    from fuseinfer.dispatch import registered_ops

    families = set(registered_ops())
    assert {"norm", "rope", "kvcache", "attention"} <= families
    for family in families:
        path = PACKAGE / "bench" / "suites" / f"{family}.py"
        assert path.exists(), f"no bench suite file for the {family} family"
    # the op the issue names, found by name both ways
    assert (PACKAGE / "ops" / "kvcache" / "store_kv_cache.py").exists()
    assert "store_kv_cache" in (PACKAGE / "bench" / "suites" / "kvcache.py").read_text()


def _imported_modules(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved (deferred ones included)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [module] + [f"{module}.{a.name}" for a in node.names]
    return out


@pytest.mark.parametrize("layer", ["runtime", "server"])
def test_runtime_and_server_import_nothing_from_bench(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    for path in files:
        upward = [m for m in _imported_modules(path) if m.startswith("fuseinfer.bench")]
        assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}"
    assert not list((PACKAGE / layer).glob("bench_*.py"))  # the e2e benches live in bench/e2e


def test_e2e_modules_import_cleanly_and_register_their_suites():
    for name in ("offline", "latency", "serving"):
        module = importlib.import_module(f"fuseinfer.bench.e2e.{name}")
        assert find_suite(name).run is module.run_command
