"""`python -m student.sweep`: a stable command name for student.sweeps.sweep, where the code lives."""

from storage_schemas.plumbing.errors import run_cli
from student.sweeps.sweep import main

if __name__ == "__main__":
    run_cli(main)
