"""`python -m storage_schemas ROOT`: what a store holds, per kind (committed units only)."""
from __future__ import annotations

import argparse
import json

from storage_schemas.errors import run_cli
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
    for kind in kinds:
        s = summary[kind]
        print(f"  {kind}: teacher {s['teacher']}, policy {s['policy_hash']}, {s['units']} units, "
              f"{s['samples_stored']}/{s['samples_in']} samples stored, {s['samples_errors']} in errors, "
              f"rows {s['rows']}, {s['bytes'] / 1e6:.2f} MB")
    texts = store.text_names()
    if texts:
        print(f"  text tables: {', '.join(texts)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
