"""The pipeline protocol: what ``medcnn predict`` and the batch runner (:mod:`medcnn.batch`) call.

A pipeline subclasses :class:`Pipeline` (usually as a frozen dataclass whose fields hold its options) and gives
``name``, ``model`` and ``fields`` as class-level values and the four methods below. Python refuses to create
one that lacks any of them (``TypeError: Can't instantiate abstract class ... without an implementation for
abstract method 'run'``), before any case is read.

Optional hooks, looked up by name (so a pipeline without them behaves as before):

* ``models`` (all bundled names) and ``load_models(refs, device)``: a pipeline of several networks;
* ``check_model(model)``: refuse an unusable checkpoint once, before any case;
* ``ood_model(model)``, ``ood_layer(model, img)``, ``ood_measure(model, case, img, layer)`` (and
  ``ood_min_scale``): out-of-distribution statistics for ``medcnn ood-fit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcnn.cases import Case


class Pipeline(ABC):
    """Base class of the task pipelines (``medcnn predict NAME``)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The name ``medcnn predict`` takes (e.g. ``"alzheimer"``)."""

    @property
    @abstractmethod
    def model(self) -> str:
        """The bundled model the pipeline runs with by default."""

    @property
    @abstractmethod
    def fields(self) -> tuple[str, ...]:
        """The pipeline's own ``summary.csv`` columns, in order (after ``case, inputs, status, error``)."""

    @abstractmethod
    def discover(self, inputs: Sequence[str | Path]) -> list[Case]:
        """The cases in the given files/folders (a case that cannot be read carries its ``error``)."""

    @abstractmethod
    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        """The files :meth:`run` writes for ``case`` (all present: the case is skipped on a rerun)."""

    @abstractmethod
    def load(self, case: Case) -> Any:
        """The case's input image(s), checked (raises :class:`~medcnn.errors.InputError` on an unusable one)."""

    @abstractmethod
    def run(self, model: Any, case: Case, img: Any, out_dir: Path) -> dict[str, Any]:
        """Predict one case, write :meth:`outputs`, and return its :attr:`fields` values."""
