"""microbench/attention_ncu.py on the CPU: ncu's two CSV pages parsed into per-kernel
metrics and stalls, and the whole run against a stand-in `ncu` (a script on PATH that
answers as ncu does) so the command, the parsing and the JSON it appends are checked
without a GPU."""

from __future__ import annotations

import argparse
import importlib.util
import json
import stat
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "microbench" / "attention_ncu.py"
spec = importlib.util.spec_from_file_location("attention_ncu", SCRIPT)
ncu_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ncu_tool)

HEAD = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
        "Block Size", "Grid Size", "Device", "CC", "Section Name", "Metric Name",
        "Metric Unit", "Metric Value"]
LAUNCH = ["0", "1", "python3", "h", "decode_mma_kernel", "1", "7", "(128, 1, 1)",
          "(1536, 1, 1)", "0", "9.0"]
STALL = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"


def _csv(rows: list[list[str]]) -> str:
    return "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows)


DETAILS = "==PROF== Connected to process 1\n" + _csv([
    HEAD,
    LAUNCH + ["GPU Speed Of Light Throughput", "DRAM Throughput", "%", "71.52"],
    LAUNCH + ["GPU Speed Of Light Throughput", "Duration", "us", "1,170.20"],
    LAUNCH + ["Occupancy", "Achieved Occupancy", "%", "40.1"]])
RAW = _csv([["ID", "Process ID", "Kernel Name", STALL.format("long_scoreboard"),
             STALL.format("barrier")],
            ["", "", "", "ratio", "ratio"],
            ["0", "1", "decode_mma_kernel", "3.25", "n/a"]])


def test_details_page_per_kernel_and_metric():
    got = ncu_tool.parse_details(DETAILS)
    assert got == {"decode_mma_kernel": {
        "GPU Speed Of Light Throughput / DRAM Throughput [%]": "71.52",
        "GPU Speed Of Light Throughput / Duration [us]": "1,170.20",
        "Occupancy / Achieved Occupancy [%]": "40.1"}}
    assert ncu_tool.parse_details("==PROF== no kernel matched\n") == {}


def test_raw_page_keeps_the_stall_columns_and_numbers_parse_defensively():
    got = ncu_tool.parse_raw(RAW)
    assert set(got) == {"decode_mma_kernel"}
    assert got["decode_mma_kernel"][STALL.format("long_scoreboard")] == "3.25"
    assert ncu_tool.parse_raw("") == {}
    assert [ncu_tool._number(v) for v in ("1,170.20", "n/a", "", "3.5")] == \
        [1170.2, 0.0, 0.0, 3.5]


def test_a_run_against_a_stand_in_ncu(tmp_path, monkeypatch):
    """The stand-in prints the details page or the raw page as asked, and records its
    arguments: the kernel filter, the skipped warm-up launches, clocks left alone."""
    (tmp_path / "details.csv").write_text(DETAILS)
    (tmp_path / "raw.csv").write_text(RAW)
    fake = tmp_path / "ncu"
    fake.write_text(f'''#!/usr/bin/env bash
echo "$@" >> {tmp_path}/calls
case " $* " in *" --page raw "*) cat {tmp_path}/raw.csv ;; *) cat {tmp_path}/details.csv ;; esac
''')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    args = argparse.Namespace(kind="decode", model="Llama-3-8B", shape="64x4096",
                              cache="fp8", variant="cuda w4 s4", kernel="decode")
    result = ncu_tool.profile(args)
    kernel = result["kernels"]["decode_mma_kernel"]
    assert kernel["details"]["Occupancy / Achieved Occupancy [%]"] == "40.1"
    assert kernel["stalls"] == {"long_scoreboard": "3.25", "barrier": "n/a"}
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2
    for call in calls:
        assert "--clock-control none" in call and "-k regex:decode" in call
        assert f"--launch-skip {ncu_tool.RUNS - 1} --launch-count 1" in call
        assert "--child" in call and "--variant cuda w4 s4" in call
    text = ncu_tool.summary(result)
    assert "Duration [us]: 1,170.20" in text and "long_scoreboard 3.25" in text
    out = tmp_path / "ncu.json"  # --json appends to what is there
    out.write_text(json.dumps([{"earlier": 1}]))
    monkeypatch.setattr("sys.argv", ["attention_ncu.py", "decode", "Llama-3-8B", "64x4096",
                                     "--variant", "cuda w4 s4", "--json", str(out)])
    ncu_tool.main()
    done = json.loads(out.read_text())
    assert done[0] == {"earlier": 1} and done[1]["kernel_regex"] == "decode"
    assert set(done[1]["kernels"]) == {"decode_mma_kernel"}
