"""`python -m student.inspect_store`: a stable command name for student.eval.inspect_store, where the code lives."""

from storage_schemas.plumbing.errors import run_cli
from student.eval.inspect_store import main

if __name__ == "__main__":
    run_cli(main)
