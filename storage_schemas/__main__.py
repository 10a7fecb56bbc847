"""`python -m storage_schemas ROOT`: what a store holds, per kind (committed units only)."""

from __future__ import annotations

import argparse
import json

from storage_schemas.plumbing.console import format_table
from storage_schemas.plumbing.errors import run_cli
from storage_schemas.store import open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage_schemas", description=__doc__)
    parser.add_argument("root", help="store URL (local path, file://, s3://...)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    store = open_store(args.root)
    summary = store.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"store {summary['url']}")
    kinds = [k for k in summary if k != "url"]
    if not kinds:
        print("  (no manifest yet: nothing materialized)")
    else:
        rows = [
            [
                kind,
                s["teacher"],
                s["policy_hash"],
                str(s["units"]),
                f"{s['samples_stored']}/{s['samples_in']}",
                str(s["samples_errors"]),
                ", ".join(f"{k} {v:,}" for k, v in sorted(s["rows"].items())),
                f"{s['bytes'] / 1e6:.2f} MB",
            ]
            for kind, s in ((k, summary[k]) for k in kinds)
        ]
        print(
            format_table(
                ["kind", "teacher", "policy", "units", "samples stored", "in errors", "table rows", "size"],
                rows,
                indent="  ",
            )
        )
    texts = store.text_names()
    if texts:
        print(f"  text tables: {', '.join(texts)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
