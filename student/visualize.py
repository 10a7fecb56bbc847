"""`python -m student.visualize`: a stable command name for student.eval.visualize, where the code lives."""

from storage_schemas.plumbing.errors import run_cli
from student.eval.visualize import main

if __name__ == "__main__":
    run_cli(main)
