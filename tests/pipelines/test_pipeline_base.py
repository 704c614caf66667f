"""The typed pipeline base class: every registered pipeline subclasses it; an incomplete one is refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from medcnn.pipelines import Pipeline, available, get_pipeline


def test_every_registered_pipeline_is_a_pipeline() -> None:
    for name in available():
        pipe = get_pipeline(name)
        assert isinstance(pipe, Pipeline) and pipe.name == name and pipe.fields


def test_a_pipeline_missing_a_method_or_attribute_fails_clearly() -> None:
    @dataclass(frozen=True)
    class NoRun(Pipeline):
        name: str = "x"
        model: str = "x"
        fields: tuple[str, ...] = ()

        def discover(self, inputs): return []
        def outputs(self, case, out_dir): return []
        def load(self, case): return None

    with pytest.raises(TypeError, match="run"):
        NoRun()

    @dataclass(frozen=True)
    class NoName(NoRun):
        def run(self, model, case, img, out_dir): return {}

    NoName()  # complete: name inherited

    class Bare(Pipeline):
        def discover(self, inputs): return []
        def outputs(self, case, out_dir): return []
        def load(self, case): return None
        def run(self, model, case, img, out_dir): return {}

    with pytest.raises(TypeError, match="fields|model|name"):
        Bare()
