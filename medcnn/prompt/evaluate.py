"""Former home of the promptable model's held-out evaluation, now :mod:`medcnn.evaluation.prompt`.

The names stay importable from here for one release; the command is ``medcnn evaluate-run prompt``
(``medcnn calibrate exact-box`` / ``medcnn calibrate offsets`` for the former ``--calibrate-exact`` /
``--fit-offsets``).
"""

from __future__ import annotations

from medcnn.evaluation.prompt import (FIT_OFFSETS, MODES, T1_STRUCTURES, _correction, _cross_validated,  # noqa: F401
                                      _interior, _lite_checkpoint, _offset_curves, _records, calibrate_exact,
                                      evaluate, evaluate_real_t1, evaluate_volumes, fit_offsets, summarise,
                                      summarise_offsets, summarise_real_t1, summarise_volumes, write_rows)

if __name__ == "__main__":  # the former `python -m medcnn.prompt.evaluate`, for one release
    raise SystemExit("moved: `medcnn evaluate-run prompt` (--calibrate-exact: `medcnn calibrate exact-box`, "
                     "--fit-offsets: `medcnn calibrate offsets`); see their --help")
