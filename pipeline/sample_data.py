"""`python -m pipeline.sample_data`: a stable command name for pipeline.sample.corpus, where the code lives."""

from pipeline.sample.corpus import main
from storage_schemas.plumbing.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
