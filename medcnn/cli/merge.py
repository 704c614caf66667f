"""``medcnn merge-summaries``: join the summaries of ``medcnn predict --shard K/N`` runs into summary.csv."""

from __future__ import annotations

from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("merge-summaries", context_settings=CONTEXT, epilog="""\b
Examples:
  for k in 1 2 3 4; do medcnn predict brain-tumor cases/ -o out --shard $k/4; done   # or 4 cluster jobs
  medcnn merge-summaries out                      # out/summary.shard-{1..4}-of-4.csv -> out/summary.csv
  medcnn merge-summaries out --allow-partial      # merge the finished shards, name the missing ones
\b
Checks: every part of the split is present (a shard's part appears when the shard has finished; the missing
ones are named), all parts have the same columns, no case is in two parts. Rows are sorted by case id. The
parts stay: after rerunning one shard, merge again. Exit status 0 merged, 1 a check failed (nothing written).
""")
@click.argument("out_dir", type=click.Path(path_type=Path), metavar="OUTDIR")
@click.option("--allow-partial", is_flag=True,
              help="Merge the parts present when some are missing (warns which); without it that is an error.")
def merge_summaries(out_dir: Path, allow_partial: bool) -> None:
    """Join OUTDIR's shard summaries (summary.shard-K-of-N.csv) into OUTDIR/summary.csv."""
    from medcnn.batch import merge_summaries as merge

    rows, missing = merge(out_dir, allow_partial=allow_partial)
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "error")}
    partial = f" (partial: {len(missing)} part(s) missing)" if missing else ""
    click.echo(f"{len(rows)} case(s): {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} failed"
               f"{partial}; summary: {out_dir / 'summary.csv'}")
