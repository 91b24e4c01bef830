"""NASTK_DIST_TIMEOUT_MIN: the process group's timeout under torchrun, and a malformed value refused in one
line. The process group is never really started: init_process_group is replaced by a recorder."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as tdist

from nastk.engine import distributed as dd
from nastk.errors import DataError

from conftest import cli_in_process


@pytest.fixture
def torchrun(monkeypatch):
    """torchrun's environment for rank 0 of 2, and the calls init_process_group would have received."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(dd.TIMEOUT_ENV, raising=False)
    calls: list[dict] = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize(("text", "minutes"), [(None, 120.0), ("7", 7.0), ("0.5", 0.5), (" 30 ", 30.0)])
def test_the_timeout_reaches_the_process_group(torchrun, monkeypatch, text, minutes):
    if text is not None:
        monkeypatch.setenv(dd.TIMEOUT_ENV, text)
    dist = dd.setup("cpu")
    assert dist.world_size == 2 and dist.is_main
    assert torchrun == [{"backend": "gloo", "timeout": timedelta(minutes=minutes)}]


@pytest.mark.parametrize("text", ["", "soon", "0", "-5", "inf", "nan", "10m"])
def test_a_malformed_timeout_is_one_line_naming_the_variable(torchrun, monkeypatch, text):
    monkeypatch.setenv(dd.TIMEOUT_ENV, text)
    with pytest.raises(DataError) as info:
        dd.setup("cpu")
    message = str(info.value)
    assert message.startswith(f"${dd.TIMEOUT_ENV}: {text!r}") and "\n" not in message
    assert torchrun == []  # refused before any process group


def test_a_malformed_timeout_exits_2_from_the_cli_before_any_work(torchrun, monkeypatch, tmp_path, capfd):
    monkeypatch.setenv(dd.TIMEOUT_ENV, "two hours")
    spec = tmp_path / "s.yaml"
    spec.write_text("seed: 1\n")
    code, out, err = cli_in_process(capfd, "search", spec, "--out", tmp_path / "run", "--device", "cpu")
    assert (
        code == 2
        and err.strip() == f"error: ${dd.TIMEOUT_ENV}: 'two hours' is not a positive number of minutes"
    )
    assert "Traceback" not in out + err and not (tmp_path / "run").exists() and torchrun == []
