"""The prepared GPU benchmarks run end to end on CPU (`--tiny`, tiny models, small data).

A session lent a GPU gets a few minutes of it, all tries together: bench/gpu_student.py and
bench/gpu_teachers.py must run the first time, so every code path they share with the CPU is run
here and each figure they print is checked to be a rate.
"""

import re

import pytest

from bench import gpu_student, gpu_teachers

pytestmark = pytest.mark.slow

RATE = r"\s+(\d+\.\d+)"


def rates(pattern: str, out: str) -> list[float]:
    """Every number `pattern`'s groups catch in `out`; at least one, each above zero."""
    found = [float(v) for m in re.finditer(pattern, out) for v in m.groups()]
    assert found, (pattern, out)
    assert all(v > 0 for v in found), (pattern, out)
    return found


def test_the_student_gpu_script_measures_memory_and_loaders(capsys):
    gpu_student.main(["--tiny"])
    out = capsys.readouterr().out
    rates(r"memory:" + RATE + " images/s per GPU", out)
    rates(r"loaders,  2 workers:" + RATE + r" images/s per GPU = (\d+\.\d+) of memory", out)
    assert "workers one GPU needs (>= 0.95 of memory): " in out, out


def test_the_teacher_gpu_script_measures_both_teachers_and_their_stages(sample_corpus, capsys):
    gpu_teachers.main(["--tiny", "--seconds", "0.3", "--corpus", str(sample_corpus)])
    out = capsys.readouterr().out
    assert len(rates(r"bare teacher" + RATE, out)) == 2, out
    assert len(rates(r"teacher stage" + RATE, out)) == 2, out
    rates(r"decode \+ resize of a 2250x1500 JPEG:" + RATE + " ms", out)
