"""`python -m pipeline.plan`: a stable command name for pipeline.materialize.plan, where the code lives."""

from pipeline.materialize.plan import main
from storage_schemas.plumbing.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
