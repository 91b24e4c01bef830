"""Thread pools on a shared machine: the cores other processes keep busy, and the governor that leaves
them free (nastk/threads.py). Sizing from affinity and quota, and --threads, are in test_cli_habits.py."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch

from nastk import threads
from nastk.threads import CpuSample, ThreadGovernor, fair_threads, others_busy


def test_others_busy_is_the_machines_busy_time_less_our_own():
    before = CpuSample(wall=10.0, busy=100.0, own=40.0)
    # 4 s of wall time: the cores were busy 6 CPU-seconds, 2 of them ours -> others kept 1 core busy
    assert others_busy(before, CpuSample(14.0, 106.0, 42.0)) == pytest.approx(1.0)
    assert others_busy(before, CpuSample(14.0, 108.0, 48.0)) == 0.0  # alone (counter skew clamps)
    assert others_busy(before, before) == 0.0  # no time passed


@pytest.mark.parametrize("usable", [1, 2, 3, 8])
def test_fair_threads_takes_the_free_cores(usable):
    for ceiling in range(1, usable + 1):
        for tenths in range(0, 10 * usable + 20):
            others = tenths / 10
            n = fair_threads(usable, ceiling, others)
            assert 1 <= n <= ceiling
            # as many threads as free cores, to the nearest core, where the ceiling and the floor allow
            free = usable - others
            assert n == max(1, min(ceiling, int(free + 0.5))), (usable, ceiling, others)
    assert fair_threads(2, 2, 0.0) == 2 and fair_threads(2, 2, 1.0) == 1 and fair_threads(2, 2, 3.0) == 1


class FakeMachine:
    """CPU samples of a 2-core machine where a neighbour's load can be set between ticks."""

    def __init__(self):
        self.wall = self.busy = self.own = 0.0
        self.neighbour = 0.0  # cores the neighbour keeps busy
        self.ours = 1.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.own += self.ours * seconds
        self.busy += (self.ours + self.neighbour) * seconds

    def sample(self) -> CpuSample:
        return CpuSample(self.wall, self.busy, self.own)

    def governor(self, applied: list, ceiling=2, usable=2, first=1.0, interval=5.0) -> ThreadGovernor:
        """A governor of this machine's samples and clock, recording the counts it applies."""
        return ThreadGovernor(
            ceiling, usable, interval, first, self.sample, apply=applied.append, clock=lambda: self.wall
        )


def test_governor_yields_to_a_neighbour_and_takes_the_cores_back(monkeypatch):
    machine, applied, logged = FakeMachine(), [], []
    monkeypatch.setattr("nastk.logs.record", logged.append)
    gov = machine.governor(applied, first=5)
    machine.ours = 2.0
    machine.advance(4)
    gov.tick()
    assert applied == [] and gov.threads == 2  # alone, and no decision before the interval
    machine.advance(1)
    gov.tick()
    assert applied == [] and gov.threads == 2  # alone: every core
    machine.neighbour, machine.ours = 1.0, 1.0  # another run starts: we get one core of two
    machine.advance(5)
    gov.tick()
    assert applied == [1] and gov.threads == 1
    assert "threads: 2 -> 1" in logged[0] and "1.0 of 2 cores busy elsewhere" in logged[0]
    machine.advance(5)
    gov.tick()
    assert applied == [1]  # steady: no change, nothing logged
    machine.neighbour = 0.0  # the neighbour ends
    machine.advance(5)
    gov.tick()
    assert applied == [1, 2] and len(logged) == 2


def test_governor_looks_first_soon_then_every_interval():
    machine, applied = FakeMachine(), []
    gov = machine.governor(applied, first=1)
    machine.neighbour = 1.0  # a run that started with ours
    machine.advance(1)
    gov.tick()
    assert applied == [1]  # after one second, not five
    machine.neighbour = 0.0
    machine.advance(4)
    gov.tick()
    assert applied == [1]  # then every five seconds
    machine.advance(1)
    gov.tick()
    assert applied == [1, 2]


def test_governor_takes_back_what_an_earlier_loop_left_smaller():
    # one process, two loops (the quickstart's search, then its retraining): the first left one thread
    machine, applied = FakeMachine(), []
    gov = ThreadGovernor(
        2, 2, 5, 1, machine.sample, apply=applied.append, clock=lambda: machine.wall, current=1
    )
    machine.advance(1)
    gov.tick()
    assert applied == [2] and gov.threads == 2


def test_governor_never_exceeds_the_ceiling():
    # a torchrun rank's share of the node: idle cores elsewhere on the node are other ranks' share
    machine, applied = FakeMachine(), []
    gov = machine.governor(applied, ceiling=2, usable=8)
    machine.advance(2)
    gov.tick()
    assert applied == [] and gov.threads == 2


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_governor_measures_real_neighbours():
    """Two processes spinning on this machine: a governor with two usable cores drops to one thread."""
    if threads.cpu_sample() is None:
        pytest.skip("no /proc/stat or cgroup cpu.stat to read CPU time from")
    applied = []
    gov = ThreadGovernor(2, usable=2, interval=0.5, apply=applied.append)
    ctx = multiprocessing.get_context("spawn")
    burners = [ctx.Process(target=_burn, args=(6.0,)) for _ in range(2)]
    for proc in burners:
        proc.start()
    try:
        time.sleep(1.5)  # the burners start (spawn imports) and then spin
        gov.last = threads.cpu_sample()
        time.sleep(1.0)
        gov.tick()
    finally:
        for proc in burners:
            proc.terminate()
            proc.join()
    assert applied == [1], "two spinning neighbours were not seen"


def test_governor_only_when_nastk_chose_the_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # an in-process --deterministic run earlier in the session leaves torch's global flag on
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    try:
        threads.set_threads(1)  # --threads 1: the user's choice stands for the whole run
        assert threads.thread_governor() is None
        threads.set_threads(None)
        gov = threads.thread_governor()
        assert isinstance(gov, ThreadGovernor) and gov.ceiling == threads.default_threads()
        assert gov.threads == torch.get_num_threads()  # starts from the pool as it is
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
        assert threads.thread_governor() is None  # --deterministic: a fixed split of every sum
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        threads.set_threads(None)  # the user's OMP_NUM_THREADS stands
        assert threads.thread_governor() is None
    finally:
        threads._chosen_by_nastk = None
        torch.set_num_threads(before)


def test_busy_seconds_reads_the_affinity_cores_or_the_cgroup(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 0 900 9000 0 0 0 0 0 0\ncpu0 100 10 50 5000 70 3 2 5 0 0\ncpu1 800 0 850 4000 0 0 0 0 0 0\n"
    )
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0})
    hz = os.sysconf("SC_CLK_TCK")
    # cpu0 only (pinned with taskset): user + nice + system + irq + softirq + steal, not idle or iowait
    assert threads.busy_seconds(stat, tmp_path) == pytest.approx(170 / hz)
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert threads.busy_seconds(stat, tmp_path) == pytest.approx(2.5)  # a quota: the cgroup's own usage


def _worker_threads(_index: int) -> int:
    return torch.get_num_threads()


def test_data_loader_workers_run_one_thread_each():
    from nastk.data.sampler import make_loader

    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.tensor(_worker_threads(index))

    seen = torch.cat(list(make_loader(Threads(), batch_size=2, num_workers=2)))
    assert seen.tolist() == [1, 1, 1, 1]


def test_training_loop_ticks_the_governor(monkeypatch):
    from nastk.engine import loop as loop_module
    from nastk.engine.loop import Loop, StepResult
    from nastk.progress import Reporter

    ticks = []

    class Recorder:
        def tick(self):
            ticks.append(1)

    monkeypatch.setattr(loop_module, "thread_governor", Recorder)
    loop = Loop(0, 3, 1, 10, lambda it: None, None, Reporter(3, 0, False, True, "t"))
    loop.run(lambda it, log: StepResult("p", ""))
    assert len(ticks) == 3


def test_predict_ticks_the_governor_once_per_case(retrained, capfd, tmp_path, monkeypatch):
    from nastk.inference import predict as predict_module

    from conftest import cli_in_process

    ticks = []

    class Recorder:
        def tick(self):
            ticks.append(1)

    monkeypatch.setattr(predict_module, "thread_governor", Recorder)
    _, root, run = retrained
    args = ["predict", run, "--input", root / "imagesTs", "--folds", "0", "--quiet", "--output", tmp_path]
    code, _, err = cli_in_process(capfd, *args)
    assert code == 0, err
    assert len(ticks) == len(list(tmp_path.glob("*.nii.gz"))) == 2
