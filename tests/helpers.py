"""Helpers shared by the CLI tests (imported as ``from helpers import run_astro``)."""

from __future__ import annotations

import sys

import pytest

from astrocli.cli import main


def run_astro(
    args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """Run the real `astro` entry point in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["astro", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich tables never fold a path
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
