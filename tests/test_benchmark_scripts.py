"""The benchmark scripts are not imported by the suite (they train, time and download): at least
every one of them must compile, so a script is never found broken only when someone runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts() -> None:
    assert {p.name for p in BENCHMARKS} >= {"defaults.py", "weights_fingerprint.py", "reference_speed.py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_script_compiles(script: Path) -> None:
    code = compile(script.read_text(), str(script), "exec")  # raises SyntaxError if broken
    assert code.co_filename == str(script)
