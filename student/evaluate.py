"""`python -m student.evaluate`: a stable command name for student.eval.evaluate, where the code lives."""

from storage_schemas.plumbing.errors import run_cli
from student.eval.evaluate import main

if __name__ == "__main__":
    run_cli(main)
