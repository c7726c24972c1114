"""Join `pearzoo eval --json` reports of one eval split by copy length (one process per `--lengths N`) into
the report one run over all the lengths gives (`pearzoo.evaluate.merge_reports`).

    python bench/eval_merge.py part10.json part25.json part50.json -o bench/results/eval/smollm2-default-nokv.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pearzoo.atomic import atomic_write_text
from pearzoo.evaluate import EvalReport, merge_reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    merged = merge_reports([EvalReport.model_validate_json(p.read_text()) for p in args.parts])
    atomic_write_text(args.out, json.dumps(merged.model_dump(mode="json", exclude_none=True), indent=1) + "\n")
    print(f"{args.out}: lengths {', '.join(merged.copy_accuracy)}, {merged.seconds:.0f} s of eval")


if __name__ == "__main__":
    main()
