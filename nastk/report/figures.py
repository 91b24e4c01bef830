"""Report figures, drawn on ``matplotlib.figure.Figure`` (Agg, no pyplot state) and written as
PNG atomically.

* :func:`search_curves`: a search ``log.csv`` over iterations;
* :func:`gap_curves`: the discretization gap G of several searches in one plot, styled as Fig. 8 of the
  paper (colour: the memory constraint sigma; dashed: with topology loss, solid: without);
* :func:`dice_distribution`: per-class DSC and NSD over cases, per method;
* :func:`progress_curves`: a retraining fold's ``progress.png`` (loss, train and validation Dice, speed, LR).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from nastk.errors import DataError
from nastk.io import atomic_write_bytes
from nastk.report.leaderboard import class_name

DPI = 150

PHASE_COLORS = {"warm-up": "#f6d7b0", "weights": "#cfe2f3", "joint": "#d9ead3"}
_SPARE_PHASE_COLORS = ["#ead1dc", "#fff2cc", "#d0e0e3", "#e6e6e6"]

LOSS_LABELS = {
    "L_seg": r"$L_{seg}$ (segmentation)",
    "L_entropy_alpha": r"$L_{entropy}$ cells ($\alpha$)",
    "L_entropy_eta": r"$L_{entropy}$ topology ($\eta$)",
    "L_topology": r"$L_{topology}$",
    "L_memory": r"$L_{memory}$",
}


def _save(fig: Figure, out_png: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(out_png, buf.getvalue())


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(dtype=float)


def _phase_spans(it: np.ndarray, phase: pd.Series) -> list[tuple[str, float, float]]:
    """Contiguous runs of one phase as (phase, start, end).

    A run ends one iteration after its last logged row (exact when the phase lengths are
    multiples of the logging interval), and never past the next run's first row.
    """
    runs: list[list] = []  # [phase, first, last]
    for x, p in zip(it, phase):
        if not isinstance(p, str) or not p:
            continue
        if runs and runs[-1][0] == p:
            runs[-1][2] = float(x)
        else:
            runs.append([p, float(x), float(x)])
    spans = []
    for i, (p, a, b) in enumerate(runs):
        nxt = runs[i + 1][1] if i + 1 < len(runs) else None
        spans.append((p, a if i == 0 else spans[-1][2], min(b + 1, nxt) if nxt is not None else b))
    return spans


def _set_loss_scale(ax, values: list[np.ndarray]) -> None:
    v = np.concatenate([a[np.isfinite(a)] for a in values]) if values else np.array([])
    if v.size and (v > 0).all():
        ax.set_yscale("log")
    elif v.size and (v > 0).any():
        ax.set_yscale("symlog", linthresh=float(v[v > 0].min()))


def search_curves(log_csv: str | Path, out_png: str | Path, sigma: float | None = None) -> Path:
    """Plot a search ``log.csv`` and write ``out_png``.

    Panels over iterations, each drawn when its columns hold data: every ``L_*`` loss term
    (log scale when all values are positive, else symlog), the discretization gap G (``gap``),
    M_e/M_a (``memory_ratio``) with the budget as a dashed line (the logged ``sigma_eff`` of a GB
    budget, else ``sigma`` when given), and the
    training Dice with the learning rate on a second axis. The search phases (``phase``:
    warm-up, weights, joint) shade the background. Empty cells (terms not logged yet) are gaps.
    """
    path = Path(log_csv)
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: no search log to plot ({e})") from e
    if "iteration" not in df.columns or df.empty:
        raise DataError(f"{path}: a search log needs an 'iteration' column and at least one row")
    df["iteration"] = pd.to_numeric(df["iteration"], errors="coerce")
    df = df.dropna(subset=["iteration"]).drop_duplicates("iteration", keep="last")
    df = df.sort_values("iteration").reset_index(drop=True)
    it = df["iteration"].to_numpy(float)

    losses = [c for c in df.columns if c.startswith("L_") and _numeric(df, c).notna().any()]
    gap = _numeric(df, "gap")
    mem = _numeric(df, "memory_ratio")
    dice = _numeric(df, "train_dice")
    lr = _numeric(df, "lr")
    panels = [
        name
        for name, ok in (
            ("losses", bool(losses)),
            ("gap", gap.notna().any()),
            ("memory", mem.notna().any()),
            ("dice", dice.notna().any() or lr.notna().any()),
        )
        if ok
    ]
    if not panels:
        raise DataError(f"{path}: no loss, gap, memory_ratio, train_dice or lr values to plot")

    fig = Figure(figsize=(9, 1.2 + 2.3 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    spans = _phase_spans(it, df["phase"]) if "phase" in df.columns else []
    colors = dict(PHASE_COLORS)
    for p, _, _ in spans:
        if p not in colors:
            colors[p] = _SPARE_PHASE_COLORS[(len(colors) - len(PHASE_COLORS)) % len(_SPARE_PHASE_COLORS)]
    for ax in axes:
        for p, a, b in spans:
            ax.axvspan(a, b, color=colors[p], alpha=0.6, lw=0, zorder=0)
        ax.grid(True, alpha=0.3, lw=0.6)

    for ax, name in zip(axes, panels):
        if name == "losses":
            vals = []
            for c in losses:
                y = _numeric(df, c).to_numpy(float)
                vals.append(y)
                ax.plot(it, y, lw=1.3, label=LOSS_LABELS.get(c, c))
            _set_loss_scale(ax, vals)
            ax.set_ylabel("loss")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        elif name == "gap":
            ax.plot(it, gap.to_numpy(float), color="C3", lw=1.3, drawstyle="steps-post")
            ax.set_ylabel("gap G")
            ax.set_ylim(bottom=0)
        elif name == "memory":
            ax.plot(it, mem.to_numpy(float), color="C4", lw=1.3, label=r"$M_e/M_a$")
            sigma_eff = _numeric(df, "sigma_eff")
            if sigma_eff.notna().any():  # a GB budget: the sigma it stands for, as logged
                budget = float(sigma_eff.dropna().iloc[-1])
                ax.axhline(
                    budget, color="k", ls="--", lw=1.0, label=rf"budget: $\sigma_{{eff}}$ = {budget:.3g}"
                )
            elif sigma is not None:
                ax.axhline(sigma, color="k", ls="--", lw=1.0, label=rf"budget $\sigma$ = {sigma:g}")
            ax.set_ylabel(r"$M_e/M_a$")
            ax.set_ylim(0, max(1.0, float(np.nanmax(mem)) * 1.05))
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        else:
            handles = []
            if dice.notna().any():
                handles += ax.plot(it, dice.to_numpy(float), color="C2", lw=1.3, label="train Dice")
                ax.set_ylim(0, 1.02)
                ax.set_ylabel("train Dice")
            if lr.notna().any():
                ax2 = ax.twinx() if dice.notna().any() else ax
                handles += ax2.plot(it, lr.to_numpy(float), color="0.35", lw=1.0, ls=":", label="lr")
                ax2.set_ylabel("learning rate")
            ax.legend(
                handles=handles, loc="upper left", bbox_to_anchor=(1.09, 1.0), fontsize=8, frameon=False
            )
    axes[-1].set_xlabel("iteration")
    axes[-1].set_xlim(it.min(), it.max() if it.max() > it.min() else it.min() + 1)
    if spans:
        seen = list(dict.fromkeys(p for p, _, _ in spans))
        fig.legend(
            handles=[Patch(color=colors[p], alpha=0.6, label=p) for p in seen],
            loc="outside lower center",
            ncol=len(seen),
            title="search phase",
            fontsize=8,
            title_fontsize=8,
            frameon=False,
        )
    fig.suptitle(f"Search curves: {path.parent.name or path.name}", fontsize=10)
    return _save(fig, out_png)


@dataclass(frozen=True)
class GapRun:
    """One search for :func:`gap_curves`: its name, ``search/log.csv``, its sigma (None without a memory
    loss; for a GB budget the ``sigma_eff`` it logged) and whether it used the topology loss."""

    name: str
    log: Path
    sigma: float | None
    topology: bool
    budget_gb: float | None = None


def _gap_series(log: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        df = pd.read_csv(log)
    except (FileNotFoundError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{log}: no search log to plot ({e})") from e
    if "iteration" not in df.columns or "gap" not in df.columns:
        raise DataError(f"{log}: a search log needs 'iteration' and 'gap' columns")
    it, gap = pd.to_numeric(df["iteration"], errors="coerce"), pd.to_numeric(df["gap"], errors="coerce")
    ok = it.notna() & gap.notna()
    return it[ok].to_numpy(float), gap[ok].to_numpy(float)


def gap_figure(runs: Sequence[GapRun]) -> Figure:
    """Fig. 8 of the paper for ``runs``: G over iterations, one colour per sigma (grey without a memory
    loss), dashed with the topology loss and solid without, one legend entry per run."""
    if not runs:
        raise DataError("gap_curves: no search logs to plot")
    sigmas = sorted({r.sigma for r in runs if r.sigma is not None})
    colour = {s: f"C{i % 10}" for i, s in enumerate(sigmas)}
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for r in runs:
        it, gap = _gap_series(r.log)
        if r.sigma is None:
            what = "no memory loss"
        elif r.budget_gb is not None:
            what = rf"{r.budget_gb:g} GB ($\sigma_{{eff}}$ = {r.sigma:.3g})"
        else:
            what = rf"$\sigma$ = {r.sigma:g}"
        label = f"{r.name}: {what}, {'with' if r.topology else 'no'} topology loss"
        ax.plot(
            it,
            gap,
            color=colour.get(r.sigma, "0.45"),
            ls="--" if r.topology else "-",
            lw=1.5,
            drawstyle="steps-post",
            label=label,
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("gap G")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3, lw=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle("Discretization gap G during search (dashed: with topology loss)", fontsize=10)
    return fig


def gap_curves(runs: Sequence[GapRun], out_png: str | Path) -> Path:
    """:func:`gap_figure` written to ``out_png``."""
    return _save(gap_figure(runs), out_png)


def _draw_groups(ax, cases: pd.DataFrame, metric: str, labels: list[int], methods: list[str]) -> None:
    rng = np.random.default_rng(0)
    n = len(methods)
    width = min(0.8 / n, 0.45)
    for j, m in enumerate(methods):
        sub = cases if m is None else cases[cases["method"] == m]
        color = f"C{j % 10}"
        for i, lab in enumerate(labels):
            v = pd.to_numeric(sub.loc[sub["class"] == lab, metric], errors="coerce").to_numpy(float)
            ok = v[np.isfinite(v)]
            x = i + (j - (n - 1) / 2) * width
            if ok.size:
                ax.boxplot(
                    [ok],
                    positions=[x],
                    widths=width * 0.75,
                    showfliers=False,
                    patch_artist=True,
                    boxprops={"facecolor": color, "alpha": 0.35, "edgecolor": color},
                    medianprops={"color": color, "lw": 1.8},
                    whiskerprops={"color": color},
                    capprops={"color": color},
                )
                jitter = rng.uniform(-width * 0.25, width * 0.25, ok.size)
                ax.scatter(x + jitter, ok, s=9, color=color, alpha=0.8, lw=0, zorder=3)
            nan = int(np.isnan(v).sum())
            if nan:
                ax.text(x, -0.06, f"{nan} empty", ha="center", va="center", fontsize=7, color="0.35")


def dice_distribution(
    cases: pd.DataFrame, out_png: str | Path, class_names: Mapping[int, str] | None = None
) -> Path:
    """Box and strip plots of DSC and NSD over cases, one group per class, and per method when
    ``cases`` has a ``method`` column; write ``out_png``.

    NaN scores (both empty) are not drawn; their count shows as "k empty" under the box.
    """
    for c in ("class", "dsc", "nsd"):
        if c not in cases.columns:
            raise DataError(f"dice_distribution: scores lack column {c!r}")
    if cases.empty:
        raise DataError("dice_distribution: no scores to plot")
    labels = sorted(int(c) for c in cases["class"].unique())
    methods = list(dict.fromkeys(cases["method"])) if "method" in cases.columns else [None]
    tols: dict[int, str] = {}
    if "tolerance" in cases.columns:
        for lab in labels:
            t = (
                pd.to_numeric(cases.loc[cases["class"] == lab, "tolerance"], errors="coerce")
                .dropna()
                .unique()
            )
            if len(t):
                tols[lab] = "/".join(f"{v:g}" for v in sorted(t)) + " mm"
    if len(set(tols.values())) == 1 and len(tols) == len(labels):
        tol_txt = f", tolerance {next(iter(tols.values()))}"
    elif tols:
        tol_txt = ", tolerance: " + ", ".join(
            f"{class_name(lab, class_names)} {t}" for lab, t in tols.items()
        )
    else:
        tol_txt = ""

    width = max(7.0, 2.0 + 1.6 * len(labels) * max(1, len(methods)) ** 0.5)
    fig = Figure(figsize=(width, 6.2), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    cases = cases.assign(**{"class": cases["class"].astype(int)})
    for ax, metric, title in (
        (axes[0], "dsc", "DSC (Dice-Sørensen)"),
        (axes[1], "nsd", "NSD (normalised surface distance" + tol_txt + ")"),
    ):
        _draw_groups(ax, cases, metric, labels, methods)
        ax.set_ylim(-0.1, 1.03)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.axhline(0, color="0.6", lw=0.6, zorder=1)
        ax.set_ylabel(metric.upper())
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(True, axis="y", alpha=0.3, lw=0.6)
        ax.set_xlim(-0.6, len(labels) - 0.4)
    axes[1].set_xticks(
        range(len(labels)), [f"{class_name(lab, class_names)}\n(label {lab})" for lab in labels], fontsize=8
    )

    def n_of(sub: pd.DataFrame) -> int:
        return int(sub["case"].nunique()) if "case" in sub.columns else len(sub) // max(1, len(labels))

    if methods != [None]:
        axes[0].legend(
            handles=[
                Patch(facecolor=f"C{j % 10}", alpha=0.5, label=f"{m} (n={n_of(cases[cases['method'] == m])})")
                for j, m in enumerate(methods)
            ],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
        )
        fig.suptitle("Per-case scores by class and method", fontsize=10)
    else:
        fig.suptitle(f"Per-case scores by class (n={n_of(cases)} cases)", fontsize=10)
    return _save(fig, out_png)


def _column(rows: Sequence[Mapping[str, object]], key: str) -> np.ndarray:
    """A column of CSV-like rows as floats; missing or empty cells are nan (gaps in a plot)."""
    return pd.to_numeric(pd.Series([r.get(key) for r in rows], dtype=object), errors="coerce").to_numpy(float)


def validation_means(val_rows: Sequence[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, mean Dice over cases and classes) of each validation in ``val_metrics.csv``'s rows;
    a validation whose Dice are all nan (no class anywhere) has none."""
    if not val_rows:
        return np.zeros(0), np.zeros(0)
    df = pd.DataFrame({"iteration": _column(val_rows, "iteration"), "dice": _column(val_rows, "dice")})
    means = df.dropna(subset=["iteration"]).groupby("iteration")["dice"].mean()
    return means.index.to_numpy(float), means.to_numpy(float)


def progress_figure(
    log_rows: Sequence[Mapping[str, object]], val_rows: Sequence[Mapping[str, object]], title: str
) -> Figure:
    """A fold's training at a glance, as nnU-Net draws it: the loss with the train and validation Dice on a
    second axis, then the seconds per iteration (where logged) and the learning rate, against iteration."""
    it = _column(log_rows, "iteration")
    per_it = _column(log_rows, "s_per_it")
    panels = ["loss", *(["speed"] if np.isfinite(per_it).any() else []), "lr"]
    fig = Figure(figsize=(9, 1.2 + 2.3 * len(panels)), layout="constrained")
    axes = dict(zip(panels, fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]))
    for ax in axes.values():
        ax.grid(True, alpha=0.3, lw=0.6)

    loss_ax = axes["loss"]
    handles = loss_ax.plot(it, _column(log_rows, "L_seg"), color="C0", lw=1.3, label="loss (L_seg)")
    loss_ax.set_ylabel("loss")
    dice_ax = loss_ax.twinx()
    handles += dice_ax.plot(it, _column(log_rows, "train_dice"), color="C2", lw=1.0, label="train Dice")
    val_it, val_dice = validation_means(val_rows)
    handles += dice_ax.plot(val_it, val_dice, "o-", color="C3", lw=1.3, ms=4, label="validation Dice")
    dice_ax.set_ylim(0, 1.02)
    dice_ax.set_ylabel("Dice")
    loss_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.09, 1.0), fontsize=8, frameon=False)
    if "speed" in axes:
        axes["speed"].plot(it, per_it, color="C4", lw=1.0)
        axes["speed"].set_ylabel("s / iteration")
        axes["speed"].set_ylim(bottom=0)
    axes["lr"].plot(it, _column(log_rows, "lr"), color="0.35", lw=1.0)
    axes["lr"].set_ylabel("learning rate")
    axes["lr"].set_xlabel("iteration")
    fig.suptitle(title, fontsize=10)
    return fig


def progress_curves(
    log_rows: Sequence[Mapping[str, object]],
    val_rows: Sequence[Mapping[str, object]],
    out_png: str | Path,
    title: str = "training progress",
) -> Path:
    """Write :func:`progress_figure` to ``out_png`` atomically (a viewer never sees half a file)."""
    return _save(progress_figure(log_rows, val_rows, title), out_png)
