"""run_batch keeps two cases in flight: case i's writing overlaps case i+1's compute, computes never overlap."""

from __future__ import annotations

import threading
from pathlib import Path

from medcnn.batch import _Serialised, run_batch
from medcnn.cases import Case
from medcnn.errors import InputError


class _FakeModel:
    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.calls: list[str] = []
        self.guard = threading.Lock()
        self.started: dict[str, threading.Event] = {}

    def predict(self, case_id: str) -> str:
        with self.guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(case_id)
        self.started.setdefault(case_id, threading.Event()).set()
        threading.Event().wait(0.02)  # "compute"
        with self.guard:
            self.active -= 1
        return case_id.upper()


class _FakePipeline:
    name = "fake"
    fields = ("value",)

    def __init__(self, ids: list[str], model: _FakeModel, bad: str = "") -> None:
        self.ids, self.model, self.bad = ids, model, bad
        self.overlapped: list[str] = []

    def discover(self, inputs):
        return [Case(id=i, inputs=[Path(i)]) for i in self.ids]

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.id}.txt"]

    def load(self, case: Case) -> str:
        if case.id == self.bad:
            raise InputError(case.id, "unreadable")
        return case.id

    def run(self, model, case: Case, data: str, out_dir: Path) -> dict:
        value = model.predict(data)
        nxt = self.ids.index(case.id) + 1
        if nxt < len(self.ids) and self.ids[nxt] != self.bad:
            # "writing": the next case's compute must start meanwhile (it cannot if cases run one by one)
            ev = self.model.started.setdefault(self.ids[nxt], threading.Event())
            if ev.wait(timeout=10):
                self.overlapped.append(case.id)
        (out_dir / f"{case.id}.txt").write_text(value)
        return {"value": value}


def test_writing_overlaps_next_compute_and_computes_are_serialised(tmp_path: Path) -> None:
    model = _FakeModel()
    ids = [f"c{i}" for i in range(5)]
    pipe = _FakePipeline(ids, model)
    rows = run_batch(pipe, model, ["x"], tmp_path, progress=False)
    assert [r["case"] for r in rows] == ids
    assert all(r["status"] == "ok" for r in rows)
    assert [r["value"] for r in rows] == [i.upper() for i in ids]
    assert model.max_active == 1, "two model calls ran at once"
    assert pipe.overlapped == ids[:-1], "a case's writing did not overlap the next case's compute"
    assert sorted(model.calls) == ids


def test_failed_case_in_flight_leaves_no_output_and_the_rest_is_done(tmp_path: Path) -> None:
    model = _FakeModel()
    ids = ["a", "b", "c"]
    pipe = _FakePipeline(ids, model, bad="b")
    rows = run_batch(pipe, model, ["x"], tmp_path, progress=False)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "unreadable" in rows[1]["error"]
    assert not (tmp_path / "b.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "A" and (tmp_path / "c.txt").read_text() == "C"


def test_serialised_proxy_passes_attributes_through() -> None:
    model = _FakeModel()
    proxy = _Serialised(model, threading.Lock())
    assert proxy.calls is model.calls
    proxy.extra = 3
    assert model.extra == 3
    assert proxy.predict("q") == "Q"
