"""`python -m pipeline.transfer_set`: a stable command name for pipeline.transfer.build, where the code lives."""

from pipeline.transfer.build import main
from storage_schemas.plumbing.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
