"""``medcnn predict --shard K/N`` and ``medcnn merge-summaries``: cluster jobs splitting one batch; torchrun over
two (local) nodes; ``--max-memory`` reaching the readers as an argument, not through the environment.

The runner's rules are tested with :class:`TextPipe` (a text file per case in milliseconds); the CLI and torchrun
tests run the alzheimer pipeline with a tiny untrained checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from relyhelp import AD_TRAIN_TINY, REPO, ad_training_set, alzheimer_predict_args, head_volume, quiet_env, tiny_checkpoint, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.batch import merge_summaries, parse_shard, run_batch, select_shard
from medcnn.cases import Case, find_image_cases
from medcnn.cli.main import cli
from medcnn.errors import ConfigError, InputError
from medcnn.io.atomic import TMP_MARK, write_text_atomic
from medcnn.io.memory import ENV_VAR


@dataclass(frozen=True)
class TextPipe:
    """A pipeline whose "model" is a string: each case's output is ``<model>:<input text>``."""

    name: str = "text"
    fields: tuple[str, ...] = ("value",)

    def discover(self, inputs):
        return find_image_cases(inputs)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.id}.txt"]

    def load(self, case: Case) -> str:
        return "".join(Path(p).read_text() for p in case.inputs)

    def run(self, model: Any, case: Case, data: str, out_dir: Path) -> dict[str, Any]:
        text = f"{model.strip()}:{data}"
        write_text_atomic(out_dir / f"{case.id}.txt", text)
        return {"value": text}


def _scans(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / f"{n}.nii.gz").write_text(n.upper())
    return folder


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _by_case(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["case"]: r for r in rows}


def test_parse_shard_counts_from_one_and_refuses_the_rest() -> None:
    assert parse_shard("1/2") == (1, 2) and parse_shard(" 2 / 2 ") == (2, 2) and parse_shard((3, 4)) == (3, 4)
    for bad, why in (("0/2", "between 1 and 2"), ("3/2", "between 1 and 2"), ("a/b", "expected K/N"),
                     ("1/0", "at least 1"), ("1", "expected K/N"), ("-1/2", "expected K/N")):
        with pytest.raises(ConfigError, match=why):
            parse_shard(bad)
    cases = [Case(id=i, inputs=[]) for i in ("d", "a", "c", "e", "b")]
    parts = [[c.id for c in select_shard(cases, k, 2)] for k in range(2)]
    assert parts == [["a", "c", "e"], ["b", "d"]], "round robin over the cases sorted by id"


def test_shards_write_their_own_parts_and_merge_to_the_unsharded_summary(tmp_path: Path) -> None:
    scans = _scans(tmp_path / "s", ["c1", "c2", "c3", "c4", "c5"])
    whole = tmp_path / "whole"
    run_batch(TextPipe(), "m", [scans], whole)
    out = tmp_path / "out"
    seen: list[str] = []
    for k in (3, 1):  # shard 2 of 3 not run yet
        rows = run_batch(TextPipe(), "m", [scans], out, shard=f"{k}/3")
        seen += [r["case"] for r in rows]
        part = out / f"summary.shard-{k}-of-3.csv"
        assert [r["case"] for r in _csv(part)] == [r["case"] for r in rows]
        assert json.loads((out / f"run.shard-{k}-of-3.json").read_text())["shard"] == f"{k}/3"
    assert sorted(seen) == ["c1", "c3", "c4"] and not (out / "summary.csv").exists()
    assert not list(out.glob("summary.*rank*.csv")), "a finished shard leaves no part in progress"

    with pytest.raises(InputError, match=r"1 of 3 shard part\(s\) missing: summary\.shard-2-of-3\.csv"):
        merge_summaries(out)
    rows, missing = merge_summaries(out, allow_partial=True)
    assert missing == ["summary.shard-2-of-3.csv"] and [r["case"] for r in rows] == ["c1", "c3", "c4"]

    run_batch(TextPipe(), "m", [scans], out, shard=(2, 3))
    rows, missing = merge_summaries(out)
    assert not missing
    assert _csv(out / "summary.csv") == _csv(whole / "summary.csv"), "the merge equals the one-process run"
    assert (out / "c2.txt").read_text() == (whole / "c2.txt").read_text() == "m:C2"
    again = run_batch(TextPipe(), "m", [scans], out, shard="2/3")
    assert [r["status"] for r in again] == ["skipped", "skipped"], "a rerun of a shard skips its finished cases"
    merge_summaries(out)  # the parts stay: a rerun shard merges again
    assert {r["status"] for r in _csv(out / "summary.csv")} == {"ok", "skipped"}


def test_merge_refuses_overlaps_other_columns_and_mixed_splits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match="is not a folder"):
        merge_summaries(out)
    out.mkdir()
    with pytest.raises(InputError, match="no shard summary"):
        merge_summaries(out)
    head = "case,inputs,status,error,value,inputs_signature,model_sha\n"
    (out / "summary.shard-1-of-2.csv").write_text(head + "a,a.nii.gz,ok,,1,s,m\nb,b.nii.gz,ok,,2,s,m\n")
    (out / "summary.shard-2-of-2.csv").write_text(head + "b,b.nii.gz,ok,,2,s,m\n")
    with pytest.raises(InputError, match=r"case 'b' is also in summary\.shard-1-of-2\.csv"):
        merge_summaries(out)
    (out / "summary.shard-2-of-2.csv").write_text(head.replace("value,", "other,") + "c,c.nii.gz,ok,,3,s,m\n")
    with pytest.raises(InputError, match="columns differ.*extra other.*lacking value"):
        merge_summaries(out)
    (out / "summary.shard-2-of-2.csv").write_text("id,score\nc,3\n")
    with pytest.raises(InputError, match="not a medcnn summary"):
        merge_summaries(out)
    (out / "summary.shard-2-of-2.csv").write_text(head + "c,c.nii.gz,ok,,3,s,m\n")
    (out / "summary.shard-1-of-3.csv").write_text(head)
    with pytest.raises(InputError, match=r"different splits \(2 part\(s\) of 2, 1 part\(s\) of 3\)"):
        merge_summaries(out)
    (out / "summary.shard-1-of-3.csv").unlink()
    rows, _ = merge_summaries(out)
    assert [r["case"] for r in rows] == ["a", "b", "c"] and not (out / "summary.shard-1-of-3.csv").exists()


def test_a_shard_cleans_only_its_own_temporary_files(tmp_path: Path) -> None:
    """A process on another machine looks dead from here: a shard must not remove the files others write."""
    scans = _scans(tmp_path / "s", ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: no such process here
    mine, theirs = (out / f".{n}{TMP_MARK}{dead}-0123abcd.txt" for n in ("a", "b"))
    for p in (mine, theirs):
        p.write_text("partial")
    run_batch(TextPipe(), "m", [scans], out, shard="1/2")  # case a
    assert not mine.exists() and theirs.exists()
    run_batch(TextPipe(), "m", [scans], out)  # one unsharded run: nobody else writes here
    assert not theirs.exists()


def test_cli_shard_option_and_merge_summaries(tmp_path: Path) -> None:
    vol, aff = head_volume()
    scans = tmp_path / "scans"
    for i in range(3):
        write_nifti(scans / f"case{i}.nii.gz", vol + i, aff)
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    base = ["predict", "alzheimer", str(scans), "--model", str(model), "--device", "cpu"]
    runner = CliRunner()
    for bad in ("0/2", "3/2", "a/b"):
        res = runner.invoke(cli, [*base, "-o", str(tmp_path / "bad"), "--shard", bad])
        assert res.exit_code == 2 and "--shard" in res.output and "K" in res.output, res.output
    assert not (tmp_path / "bad").exists()
    one = runner.invoke(cli, [*base, "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    out = tmp_path / "out"
    for k in (1, 2):
        res = runner.invoke(cli, [*base, "-o", str(out), "--shard", f"{k}/2"])
        assert res.exit_code == 0 and f"summary.shard-{k}-of-2.csv" in res.output, res.output
    merged = runner.invoke(cli, ["merge-summaries", str(out)])
    assert merged.exit_code == 0 and "3 case(s): 3 ok" in merged.output, merged.output
    assert _csv(out / "summary.csv") == _csv(tmp_path / "one" / "summary.csv")
    (out / "summary.shard-2-of-2.csv").unlink()
    partial = runner.invoke(cli, ["merge-summaries", str(out)])
    assert partial.exit_code == 1 and "summary.shard-2-of-2.csv" in partial.output and "Traceback" not in partial.output
    assert runner.invoke(cli, ["merge-summaries", str(out), "--allow-partial"]).exit_code == 0
    assert len(_csv(out / "summary.csv")) == 2


def test_max_memory_reaches_the_readers_without_the_environment(tmp_path: Path, no_env_limit) -> None:
    """``medcnn --max-memory`` is passed down as an argument: it works with MEDCNN_MAX_MEMORY unset and sets nothing."""
    scans, model, args = alzheimer_predict_args(tmp_path)
    res = CliRunner().invoke(cli, ["--max-memory", "64K", *args])
    assert res.exit_code == 1 and "Traceback" not in res.output
    rows = _csv(tmp_path / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["error", "error"], "both cases, read on the prefetch thread, are refused"
    assert all("limit of 64 KiB" in r["error"] for r in rows)
    assert ENV_VAR not in os.environ, "the limit did not travel through the environment"
    ok = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert ok.exit_code == 0, "the limit ends with its command: " + ok.output
    rows = run_batch(TextPipe(), "m", [_scans(tmp_path / "t", ["x"])], tmp_path / "o2")  # a library call: no limit
    assert rows[0]["status"] == "ok"

    from medcnn.pipelines import get_pipeline, load_models

    pipe = get_pipeline("alzheimer")
    net, info = load_models(pipe, [str(model)], device="cpu")
    lib = run_batch(pipe, net, [scans], tmp_path / "lib", model_info=info, max_memory="64K")
    assert [r["status"] for r in lib] == ["error", "error"] and "limit of 64 KiB" in lib[0]["error"]
    with pytest.raises(ConfigError, match="max_memory"):
        run_batch(pipe, net, [scans], tmp_path / "lib2", model_info=info, max_memory="plenty")


def test_max_memory_still_reaches_the_training_preprocessing_threads(tmp_path: Path, no_env_limit) -> None:
    """Training preprocesses cases on threads of its own: the limit must reach them too (75 KiB scans, 60 KiB limit;
    the network, about 57 KiB to train, fits it)."""
    manifest = ad_training_set(tmp_path / "ad")
    sets = [a for o in [f"data.source={manifest}", *AD_TRAIN_TINY, "train.epochs=1"] for a in ("--set", o)]
    res = CliRunner().invoke(cli, ["--max-memory", "60K", "train", str(REPO / "configs" / "alzheimer.yaml"), *sets,
                                   "-o", str(tmp_path / "run")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert ".nii.gz: image of 20x24x20 samples" in res.output and "limit of 60 KiB" in res.output, res.output
    assert ENV_VAR not in os.environ, "the limit ends with its command"


@pytest.fixture
def no_env_limit(monkeypatch) -> None:
    """MEDCNN_MAX_MEMORY unset during the test, and as it was afterwards."""
    monkeypatch.setenv(ENV_VAR, "")  # registers the restore; delenv of an absent variable would not
    monkeypatch.delenv(ENV_VAR)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_nodes_on_one_machine_match_one_process(tmp_path: Path) -> None:
    """Two torchrun launchers (--nnodes 2, node ranks 0 and 1, one process each, static rendezvous on localhost)
    predict one batch into one folder: the merged summary equals a one-process run's."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed beside this Python")
    vol, aff = head_volume()
    scans = tmp_path / "scans"
    for i in range(4):
        write_nifti(scans / f"case{i}.nii.gz", vol + i, aff)
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    predict = ["-m", "medcnn.cli.main", "predict", "alzheimer", str(scans), "--model", str(model), "--device", "cpu"]
    one = CliRunner().invoke(cli, [*predict[2:], "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output

    port = _free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    for node in (0, 1):
        cmd = [torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(port), *predict, "-o", str(tmp_path / "two")]
        log = open(logs / f"node{node}.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=quiet_env(), cwd=REPO), log))
    failed = []
    try:
        for node, (proc, _) in enumerate(procs):
            try:
                if proc.wait(timeout=420) != 0:
                    failed.append(f"node {node} exited {proc.returncode}")
            except subprocess.TimeoutExpired:
                failed.append(f"node {node} did not finish in 420 s")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if failed:  # keep both logs in the message: a bare failure says nothing about where it stalled
        tails = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.iterdir()))
        pytest.fail(f"{'; '.join(failed)} (logs in {logs})\n{tails}")
    two = tmp_path / "two"
    assert _csv(two / "summary.csv") == _csv(tmp_path / "one" / "summary.csv")
    assert not list(two.glob("summary.*rank*.csv")), "the ranks' parts are merged and removed"
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
