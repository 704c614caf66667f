"""Fit a classifier checkpoint's temperature (:mod:`medcnn.inference.calibration`) on held-out labelled cases.

::

    medcnn generate alzheimer -n 60 --seed 3201 -o data/ad_cal
    medcnn calibrate temperature alzheimer data/ad_cal -o alzheimer_cal.pt

The cases are run exactly as ``medcnn predict`` runs them (same loading, preprocessing and mirror TTA); the
uncalibrated logits and the labels fit ``T``, and a copy of the checkpoint gets the ``calibration`` section
(every other entry, the weights included, as read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.errors import ConfigError, InputError, MedcnnError
from medcnn.evaluation.alzheimer import subject_of, read_diagnoses

logger = logging.getLogger(__name__)

#: pipelines whose cases carry labels this module can read
SUPPORTED = ("alzheimer",)


def _participants_of(image: Path, roots: Sequence[Path]) -> Path | None:
    """The nearest ``participants.tsv`` above ``image`` (BIDS root), not above the DATA folders given."""
    stop = {r.resolve() for r in roots}
    for parent in image.resolve().parents:
        if (parent / "participants.tsv").is_file():
            return parent / "participants.tsv"
        if parent in stop:
            return None
    return None


def alzheimer_labels(cases: Sequence[Any], data: Sequence[Path], classes: Sequence[str]) -> dict[str, int]:
    """Class index (in the checkpoint's ``classes``) of every case whose BIDS ``participants.tsv`` diagnosis is one of them.

    Raises:
        InputError: no case has a usable diagnosis.
    """
    tables: dict[Path, dict[str, str]] = {}
    out: dict[str, int] = {}
    for case in cases:
        if not case.inputs:
            continue
        tsv = _participants_of(Path(case.inputs[0]), data)
        if tsv is None:
            continue
        if tsv not in tables:
            tables[tsv] = read_diagnoses(tsv)
        dx = tables[tsv].get(subject_of(case.id))
        if dx in classes:
            out[case.id] = list(classes).index(dx)
    if not out:
        raise InputError(data[0] if data else None, f"no case has a participants.tsv diagnosis among {list(classes)}")
    return out


def collect_logits(pipeline: Any, model: Any, data: Sequence[Path], progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Uncalibrated logits and labels of the labelled cases in ``data``.

    Returns:
        ``(case ids, (N, K) float64 logits, (N,) int64 class indices)``; cases that fail to load or run are
        left out with a warning.

    Raises:
        InputError: no labelled case could be run.
    """
    from tqdm.auto import tqdm

    cases = [c for c in pipeline.discover(list(data)) if not c.error]
    labels = alzheimer_labels(cases, data, [str(c) for c in model.config["labels"]["classes"]])
    ids, logits, y = [], [], []
    for case in tqdm([c for c in cases if c.id in labels], desc="calibrate", unit="case", disable=not progress):
        try:
            z = model.predict_logits(pipeline.load(case))
        except MedcnnError as exc:
            logger.warning("%s: left out of the fit (%s)", case.id, exc)
            continue
        ids.append(case.id)
        logits.append(z.double().numpy())
        y.append(labels[case.id])
    if not ids:
        raise InputError(data[0] if data else None, "no labelled case could be run")
    return ids, np.stack(logits), np.asarray(y, dtype=np.int64)


def fit_temperature_checkpoint(pipeline_name: str, data: Sequence[str | Path], dest: str | Path,
                               refs: Sequence[str] | None = None, *, device: str | None = None,
                               progress: bool = True) -> dict[str, Any]:
    """Fit ``T`` on held-out labelled cases and write a copy of the checkpoint with the ``calibration`` section.

    Args:
        pipeline_name: a pipeline in :data:`SUPPORTED`.
        data: folders of held-out cases of the model's training generator (seeds it never trained on), with
            their labels (alzheimer: BIDS ``participants.tsv``, column ``diagnosis``).
        dest: the new checkpoint (any existing ``calibration`` section is replaced).
        refs: ``--model`` as for ``medcnn predict`` (``None``: the bundled model).
        device: device name; progress: show a progress bar.

    Returns:
        ``{"temperature", "n", "nll": [before, after], "ece": [before, after], "accuracy": [before, after], "dest"}``
        on the fitting cases (ECE: 15 bins, of the positive class for two classes, else top-label).

    Raises:
        ConfigError: an unsupported pipeline.
        InputError: unusable data or checkpoint.
    """
    from medcnn.engine.checkpoint import load_checkpoint, save_checkpoint
    from medcnn.inference.calibration import CALIBRATION_KEY, fit_temperature, nll, probabilities, section
    from medcnn.metrics.classification import expected_calibration_error
    from medcnn.pipelines import get_pipeline, load_models

    if pipeline_name not in SUPPORTED:
        raise ConfigError(f"temperature scaling reads labels for the {', '.join(SUPPORTED)} pipeline(s), not {pipeline_name!r}")
    pipeline = get_pipeline(pipeline_name)
    model, _ = load_models(pipeline, list(refs or []) or None, device=device)
    if pipeline_name == "alzheimer":
        pipeline.check_model(model)
    paths = [Path(d) for d in data]
    ids, z, y = collect_logits(pipeline, model, paths, progress)
    if len(np.unique(y)) < 2:
        raise InputError(paths[0], f"all {len(y)} fitting cases have one class; temperature scaling needs both")
    t = fit_temperature(z, y)
    pos = 1
    if pipeline_name == "alzheimer":
        from medcnn.pipelines.alzheimer import ad_index

        pos = ad_index(model.config)

    def ece(temp: float) -> float:
        p = probabilities(z, temp)
        return expected_calibration_error(p[:, pos], (y == pos).astype(int)) if p.shape[1] == 2 else expected_calibration_error(p, y)

    acc = [float((probabilities(z, temp).argmax(1) == y).mean()) for temp in (1.0, t)]
    report = {"nll": [nll(z, y, 1.0), nll(z, y, t)], "ece": [ece(1.0), ece(t)], "accuracy": acc}
    ck = load_checkpoint(model.path)
    ck[CALIBRATION_KEY] = section(t, n_fit=len(ids), report=report, data=paths)
    save_checkpoint(ck, dest)
    logger.debug("temperature %.4f fitted on %d case(s) -> %s", t, len(ids), dest)
    return {"temperature": t, "n": len(ids), **report, "dest": str(dest)}
