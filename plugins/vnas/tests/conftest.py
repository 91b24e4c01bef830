"""The vnas plugin's tests use nastk's test helpers: tinydata from tests/, and the fixtures and ``run_cli``
of tests/conftest.py (imported under another name, as plugins/dints/tests/conftest.py explains)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NASTK_TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(NASTK_TESTS) not in sys.path:
    sys.path.insert(0, str(NASTK_TESTS))


def _shared_conftest():
    spec = importlib.util.spec_from_file_location("nastk_tests_conftest", NASTK_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _shared_conftest()
paper_ops = _shared.paper_ops
_deterministic = _shared._deterministic  # autouse: every test starts from torch seed 0, as in tests/
retrained = _shared.retrained
run_cli = _shared.run_cli
cli_in_process = _shared.cli_in_process
