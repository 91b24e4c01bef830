"""Concurrent runs on a shared CPU machine: k quickstart-sized runs at once against one alone.

    python bench/concurrency.py [--runs 1 2] [--policies default fixed one] [--retrain-iters 150]

One run is what the quickstart does for one fold, through the CLI: ``nastk search`` of the quickstart
spec (its 80 iterations) then ``nastk retrain --fold 0`` (``--retrain-iters``, then the fold's
out-of-fold predictions). The synthetic data and its preprocessing cache are written once, untimed,
and shared read-only by every run. Each policy runs k copies at once; the table gives each run's wall
time and the slowdown against one run alone under the same policy (k runs sharing the cores fairly
would cost about k x, or less when one run alone cannot keep every core busy).

Policies (``--policies``):
  default   what nastk chooses (nastk/threads.py): threads from the cores the process may use, then
            every few seconds as many as other processes leave free (at least one)
  fixed     ``--threads <cores>``: every run keeps every core for its whole life, as plain torch
            does (and nastk did before the thread governor)
  one       ``--threads 1`` in every run

``--probe`` first answers why (docs/troubleshooting.md): k processes of a small 3D conv training loop
(6 conv + instance-norm layers, 4 channels, 2 x 32^3, 40 steps) with every core and OpenMP's spinning
wait (libgomp's default), with every core and OpenMP threads that sleep (OMP_WAIT_POLICY=passive), and
with one thread each.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
NASTK = [sys.executable, "-m", "nastk"]


def policy_env_args(policy: str, cores: int) -> tuple[dict[str, str], list[str]]:
    """Environment and extra CLI arguments of one policy. A user's OpenMP variables are dropped so that
    each policy means what its name says."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    if policy == "default":
        return env, []
    if policy == "fixed":
        return env, ["--threads", str(cores)]
    if policy == "one":
        return env, ["--threads", "1"]
    raise SystemExit(f"--policies: unknown policy {policy!r} (default, fixed, one)")


PROBE = """
import sys, time, torch
torch.manual_seed(0)
nn = torch.nn
block = lambda: (nn.Conv3d(4, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.ReLU())
net = nn.Sequential(*[m for _ in range(6) for m in block()])
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.randn(2, 4, 32, 32, 32)
t0 = time.perf_counter()
for _ in range(40):
    opt.zero_grad(); net(x).square().mean().backward(); opt.step()
print(time.perf_counter() - t0)
"""
PROBE_SETTINGS = {
    "every core, spinning wait": {"OMP_NUM_THREADS": "{cores}"},
    "every core, sleeping wait": {"OMP_NUM_THREADS": "{cores}", "OMP_WAIT_POLICY": "passive"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}


def probe(cores: int, counts: list[int]) -> Table:
    """Seconds per process of k copies of the probe loop at once, for each thread setting."""
    table = Table(title="probe: 40 steps of a small conv net, seconds per process")
    table.add_column("threads")
    for k in counts:
        table.add_column(f"{k} at once")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    for name, setting in PROBE_SETTINGS.items():
        env = {**base, **{k: v.format(cores=cores) for k, v in setting.items()}}
        cells = []
        for k in counts:
            procs = [
                subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(k)
            ]
            times = [float(p.communicate()[0]) for p in procs]
            cells.append(f"{sum(times) / k:.1f}")
        table.add_row(name, *cells)
        Console().print(f"probe {name}: {cells}", highlight=False)
    return table


def prepare(work: Path) -> Path:
    """The synthetic task, its cache and the spec every run uses; untimed."""
    spec = yaml.safe_load((REPO / "specs" / "quickstart.yaml").read_text())
    data = work / "data"
    if not (data / "dataset.json").exists():
        synth = spec.pop("synth")
        subprocess.run(
            [*NASTK, "synth", str(data), "--cases", str(synth["cases"]), "--size", str(synth["size"])],
            check=True,
        )
    spec.pop("synth", None)
    spec["dataset"]["root"] = str(data)
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run([*NASTK, "preprocess", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def one_run(spec: Path, run: Path, env: dict, extra: list[str], retrain_iters: int) -> subprocess.Popen:
    """A shell that runs search then retrain fold 0, as one process tree."""
    sets = [
        f"retrain.iters={retrain_iters}",
        f"retrain.milestones=[{retrain_iters * 2 // 3},{retrain_iters * 5 // 6}]",
        f"retrain.val_every={retrain_iters + 10}",
    ]
    search = [*NASTK, "search", str(spec), "--out", str(run), "--quiet", *extra]
    retrain = [*NASTK, "retrain", str(spec), "--arch", str(run / "arch.json"), "--fold", "0"]
    retrain += ["--quiet", *extra, *[a for s in sets for a in ("--set", s)]]
    script = " && ".join(subprocess.list2cmdline(c) for c in (search, retrain))
    with open(run.with_suffix(".log"), "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(["bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)


def measure(spec: Path, work: Path, policy: str, k: int, retrain_iters: int, cores: int) -> list[float]:
    env, extra = policy_env_args(policy, cores)
    runs = [work / f"{policy}-{k}-{i}" for i in range(k)]
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
    starts = time.monotonic()
    procs = [one_run(spec, run, env, extra, retrain_iters) for run in runs]
    walls = []
    for proc, run in zip(procs, runs, strict=True):
        if proc.wait() != 0:
            raise SystemExit(f"{run}: failed, see {run.with_suffix('.log')}")
        walls.append(time.monotonic() - starts)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2], help="concurrent runs to try")
    parser.add_argument("--policies", nargs="+", default=["default", "fixed"])
    parser.add_argument("--retrain-iters", type=int, default=150)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    parser.add_argument("--probe", action="store_true", help="first the probe loop at 1, 2 and 4 at once")
    parser.add_argument("--probe-only", action="store_true", help="only the probe loop")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.probe or args.probe_only:
        Console().print(probe(cores, [1, 2, 4]))
        if args.probe_only:
            return
    work = args.work or Path(tempfile.mkdtemp(prefix="nastk-concurrency-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(work)

    table = Table(title=f"{cores} cores, {platform.machine()}, {time.strftime('%Y-%m-%d')}")
    for column in ("policy", "runs at once", "wall per run (s)", "slowdown vs alone", "fair share"):
        table.add_column(column)
    for policy in args.policies:
        alone = None
        for k in sorted(args.runs):
            walls = measure(spec, work, policy, k, args.retrain_iters, cores)
            mean = sum(walls) / len(walls)
            alone = mean if k == 1 else alone
            slowdown = f"{mean / alone:.1f}x" if alone else "-"
            walls_text = " / ".join(f"{w:.0f}" for w in walls)
            table.add_row(policy, str(k), walls_text, slowdown, f"{k}x")
            Console().print(f"{policy} x{k}: {walls_text} s", highlight=False)
    Console().print(table)


if __name__ == "__main__":
    main()
