"""`python -m pipeline.materialize JOB.yaml`: see pipeline.materialize.job."""

from pipeline.materialize.job import main
from storage_schemas.plumbing.errors import run_cli

run_cli(main)
