"""medcnn evaluate-run / calibrate / merge-sets: --help with examples, the former python -m names point there."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from medcnn.cli.main import cli

COMMANDS = [["evaluate-run"], ["evaluate-run", "chest-xray"], ["evaluate-run", "alzheimer"], ["evaluate-run", "prompt"],
            ["calibrate"], ["calibrate", "fusion"], ["calibrate", "exact-box"], ["calibrate", "offsets"], ["merge-sets"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_examples(cmd: list[str]) -> None:
    res = CliRunner().invoke(cli, [*cmd, "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and f"medcnn {' '.join(cmd)}" in res.output


def test_listed_in_medcnn_help_and_evaluate_unchanged() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    assert all(name in out for name in ("evaluate-run", "calibrate", "merge-sets", "evaluate "))
    assert "PRED REF" in CliRunner().invoke(cli, ["evaluate", "--help"]).output


def test_prompt_needs_data_or_real_t1() -> None:
    res = CliRunner().invoke(cli, ["evaluate-run", "prompt"])
    assert res.exit_code == 2 and "DATA" in res.output


@pytest.mark.parametrize("module", ["medcnn.prompt.evaluate", "medcnn.pipelines.alzheimer"])
def test_former_entry_points_name_the_new_command(module: str) -> None:
    res = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "medcnn evaluate-run" in res.stderr
