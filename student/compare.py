"""`python -m student.compare`: a stable command name for student.sweeps.compare, where the code lives."""

from storage_schemas.plumbing.errors import run_cli
from student.sweeps.compare import main

if __name__ == "__main__":
    run_cli(main)
