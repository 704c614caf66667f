"""``python -m benchmarks.genb TASK -n N --seed S -o DIR``: write a generator-B test set."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

TASKS = {"alzheimer": "alzheimer", "brain-tumor": "brain_tumor", "chest-xray": "chest_xray", "prompt": "prompt"}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the task's ``generate``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.genb", description=__doc__)
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("-n", type=int, required=True, help="cases (prompt: objects)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mod = importlib.import_module(f"benchmarks.genb.{TASKS[args.task]}")
    path = mod.generate(args.n, args.seed, args.out)
    logging.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
