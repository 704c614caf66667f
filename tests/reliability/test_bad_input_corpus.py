"""Every registered ``medcnn predict`` pipeline on a folder mixing good scans with the bad-input corpus.

For each bad item: one line naming the file and the reason on stderr and in summary.csv
(``status=error``), no traceback, no output file; the good cases still finish; exit status 1.
A pipeline registered later (e.g. chest-xray) is picked up automatically through
:func:`medcnn.pipelines.available` and :data:`badinputs.CORPORA`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from badinputs import CORPORA, Corpus
from click.testing import CliRunner
from relyhelp import run_cli, tiny_checkpoint, tiny_models
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.cli.main import cli
from medcnn.io.atomic import TMP_MARK
from medcnn.pipelines import available, get_pipeline


def _model_args(pipeline: str, tmp: Path) -> list[str]:
    """``--model tiny.pt ...`` (untrained, built in a second), else the pipeline's bundled model(s), else skip."""
    made = tiny_models(pipeline, tmp / "models")
    if made is not None:
        return [a for ck in made for a in ("--model", str(ck))]
    from medcnn.predictor import bundled_path

    pipe = get_pipeline(pipeline)
    if any(bundled_path(name) is None for name in getattr(pipe, "models", (pipe.model,))):
        pytest.skip(f"{pipeline}: no tiny model recipe in relyhelp.py and no bundled model to run the corpus with")
    return []


def _belongs(row: dict[str, str], path: Path) -> bool:
    """Whether a summary row's inputs are ``path`` or lie inside it."""
    for inp in row["inputs"].split(";"):
        p = Path(inp)
        if p == path or path in p.parents:
            return True
    return False


def _check_rows(corpus: Corpus, rows: list[dict[str, str]]) -> None:
    claimed: set[str] = set()
    for item, path in corpus:
        mine = [r for r in rows if _belongs(r, path)]
        assert mine, f"{item.name}: no summary row for {path}"
        claimed.update(r["case"] for r in mine)
        for r in mine:
            if item.ok:
                assert r["status"] == "ok", f"{item.name}: good case failed: {r}"
                continue
            assert r["status"] == "error", f"{item.name}: bad input not reported: {r}"
            assert re.search(item.reason, r["error"]), f"{item.name}: {r['error']!r} does not match {item.reason!r}"
            assert path.name in r["error"], f"{item.name}: the error does not name {path.name}: {r['error']!r}"
            assert "\n" not in r["error"] and "Traceback" not in r["error"]
    extra = [r["case"] for r in rows if r["case"] not in claimed]
    assert not extra, f"cases that belong to no corpus item: {extra}"


@pytest.mark.parametrize("pipeline", available())
def test_bad_input_corpus_through_predict(pipeline: str, tmp_path: Path) -> None:
    if pipeline not in CORPORA:
        pytest.skip(f"no bad-input corpus for pipeline {pipeline!r}: add one to tests/reliability/badinputs.py")
    model = _model_args(pipeline, tmp_path)
    corpus, inputs = CORPORA[pipeline](tmp_path / "input data ü")
    out = tmp_path / "out put"
    res = run_cli("predict", pipeline, *map(str, inputs), "-o", str(out), "--device", "cpu", *model)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    _check_rows(corpus, rows)

    pipe = get_pipeline(pipeline)
    cases = {c.id: c for c in pipe.discover(inputs)}
    lines = res.stderr.splitlines()
    for r in rows:
        outputs = pipe.outputs(cases[r["case"]], out)
        if r["status"] == "ok":
            assert all(p.is_file() and p.stat().st_size > 0 for p in outputs), r["case"]
            continue
        assert not any(p.exists() for p in outputs), f"{r['case']}: a failed case left an output"
        said = [ln for ln in lines if ln.startswith(f"{r['case']}: ")]
        assert len(said) == 1, f"{r['case']}: expected one stderr line, got {said}"
        assert r["error"] in said[0]
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name], "temporary files left behind"
    n_err = sum(r["status"] == "error" for r in rows)
    assert f"{len(rows) - n_err} ok, 0 skipped, {n_err} failed" in res.stdout


def test_debug_flag_shows_the_traceback_only_when_asked(tmp_path: Path) -> None:
    """``medcnn --debug`` adds the traceback of a failed case; without it the failure stays one line."""
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    bad = tmp_path / "scans" / "broken_T1w.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not a volume")
    args = ["predict", "alzheimer", str(bad.parent), "-o", str(tmp_path / "o"), "--model", str(model), "--device", "cpu"]
    plain = CliRunner().invoke(cli, args)
    debug = CliRunner().invoke(cli, ["--debug", *args[:4], str(tmp_path / "o2"), *args[5:]])
    assert plain.exit_code == 1 and debug.exit_code == 1
    assert "Traceback" not in plain.output
    assert "broken_T1w.nii.gz" in plain.output and "not a readable NIfTI" in plain.output
    assert "Traceback" in debug.output
