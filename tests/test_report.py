"""Reporting layer: the paper's Table 2, leaderboards, report files and figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from nastk.errors import DataError, NastkError
from nastk.report import (
    MSD_CLASSES,
    PAPER_TABLE2,
    SOURCE,
    TASKS,
    UnknownTaskError,
    cases_frame,
    dice_distribution,
    leaderboard,
    markdown_table,
    paper_rows,
    resolve_task,
    search_curves,
    summary,
    write_report,
)
from nastk.report.paper import METHODS

PAPER_TXT = Path(__file__).parents[1] / ".." / "shared" / "paper" / "dints-cvpr2021.txt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TWO_CLASS = ["DSC1", "DSC2", "DSC avg", "NSD1", "NSD2", "NSD avg"]


# ---------------------------------------------------------------------------- paper Table 2


def test_paper_spot_checks():
    assert PAPER_TABLE2["Brain"]["DiNTS"]["DSC1"] == 69.28
    assert PAPER_TABLE2["Brain"]["CerebriuDIKU"]["NSD avg"] == 82.04
    assert PAPER_TABLE2["Heart"]["nnUNet"] == {"DSC1": 93.30, "NSD1": 96.74}
    assert PAPER_TABLE2["Liver"]["Kim et al"]["DSC avg"] == 83.605
    assert PAPER_TABLE2["Prostate"]["C2FNAS"]["NSD1"] == 98.79  # printed so (NSD1 > NSD2 here)
    assert PAPER_TABLE2["Hepatic Vessels"]["Kim et al"]["NSD avg"] == 80.825
    assert PAPER_TABLE2["Pancreas"]["DiNTS"]["DSC2"] == 55.35
    assert PAPER_TABLE2["Overall"]["nnUNet"] == {"DSC avg": 77.89, "NSD avg": 88.09}
    assert PAPER_TABLE2["Overall"]["DiNTS"] == {"DSC avg": 77.93, "NSD avg": 88.68}
    assert set(PAPER_TABLE2) == set(TASKS) and len(TASKS) == 11
    for task in TASKS:
        assert list(PAPER_TABLE2[task]) == list(METHODS)
    assert "Table 2" in SOURCE and "by hand" in SOURCE and "leaderboard" in SOURCE


def test_paper_averages_are_consistent():
    """Each task's Avg. is the mean of its classes, and Overall the mean of the ten task averages
    (which confirms that the block headed "Overall" also holds Pancreas)."""
    for task in TASKS[:-1]:
        for m, row in PAPER_TABLE2[task].items():
            for k in ("DSC", "NSD"):
                per_class = [v for c, v in row.items() if c[:3] == k and c[3:].isdigit()]
                if f"{k} avg" in row:
                    assert abs(np.mean(per_class) - row[f"{k} avg"]) < 0.0051, (task, m, k)
                else:
                    assert len(per_class) == 1
    for m in METHODS:
        for k in ("DSC", "NSD"):
            tasks = [PAPER_TABLE2[t][m] for t in TASKS[:-1]]
            mean = np.mean([r.get(f"{k} avg", r.get(f"{k}1")) for r in tasks])
            assert abs(mean - PAPER_TABLE2["Overall"][m][f"{k} avg"]) < 0.011, (m, k)


def _parse_table2(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """Re-read Table 2 from the extracted paper text, independently of nastk.report.paper."""
    lines = text.splitlines()
    end = next(i for i, ln in enumerate(lines) if ln.startswith("Table 2."))
    starts = [i for i, ln in enumerate(lines[:end]) if ln.startswith("Metric\t")][-6:]
    # Header fragments as garbled in the text, and the tasks each block's columns belong to.
    layout = [
        ({"Brain"}, [("Brain", 8)]),
        ({"He", "eart", "/er"}, [("Heart", 2), ("Liver", 6)]),
        ({"Lung", "Hippocampus"}, [("Lung", 2), ("Hippocampus", 6)]),
        ({"Spl", "een", "Prosta", "ate"}, [("Spleen", 2), ("Prostate", 6)]),
        ({"Co", "lon", "Hepatic Vessels"}, [("Colon", 2), ("Hepatic Vessels", 6)]),
        ({"Overall"}, [("Pancreas", 6), ("Overall", 2)]),
    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for start, (fragments, parts) in zip(starts, layout):
        header = lines[start - 1]
        for frag in fragments:
            assert frag in header, (frag, header)
        cols = [c for c in lines[start].split("\t")[1:] if c]
        assert len(cols) == sum(n for _, n in parts)
        for ln in lines[start + 1 : start + 7]:
            cells = [c for c in ln.split("\t") if c]
            method = re.sub(r"\s*\[\d+\]$", "", cells[0])
            vals = [float(v) for v in cells[1:]]
            assert len(vals) == len(cols), ln
            i = 0
            for task, n in parts:
                names, last = [], ""
                for c in cols[i : i + n]:
                    if c == "Avg.":
                        names.append(f"{last} avg")
                    elif task == "Overall":  # printed as "DSC", "NSD": the mean over tasks
                        names.append(f"{c} avg")
                    else:
                        last = c[:3]
                        names.append(c)
                assert len(set(names)) == n, names
                out.setdefault(task, {})[method] = dict(zip(names, vals[i : i + n]))
                i += n
    return out


@pytest.mark.skipif(not PAPER_TXT.exists(), reason="paper text (../shared/paper) not beside the clone")
def test_paper_transcription_matches_the_text():
    parsed = _parse_table2(PAPER_TXT.read_text(encoding="utf-8"))
    assert set(parsed) == set(TASKS)
    for task in TASKS:
        assert parsed[task] == PAPER_TABLE2[task], task


def test_paper_rows_layout():
    df = paper_rows("pancreas")
    assert list(df.columns) == ["rank", "method", "source", *TWO_CLASS]
    assert list(df["rank"]) == [1, 2, 3, 4, 5, 6]
    assert df.iloc[0]["method"] == "DiNTS" and (df["source"] == "paper Table 2").all()
    assert list(paper_rows("Task02_Heart").columns) == ["rank", "method", "source", "DSC1", "NSD1"]
    assert list(paper_rows("Overall").columns) == ["rank", "method", "source", "DSC avg", "NSD avg"]
    every = paper_rows()
    assert len(every) == 6 * len(TASKS) and every.columns[0] == "task"
    assert resolve_task("Task08_HepaticVessel") == "Hepatic Vessels"
    assert resolve_task("BrainTumour") == "Brain"
    with pytest.raises(UnknownTaskError) as e:
        paper_rows("Kidney")
    assert isinstance(e.value, KeyError) and isinstance(e.value, NastkError)
    assert "Kidney" in str(e.value)


# ---------------------------------------------------------------------------- leaderboard


def _scores(dsc: list[tuple[float, float]], tol=(1.0, 2.0)) -> pd.DataFrame:
    rows = []
    for i, per_class in enumerate(dsc):
        for label, d in enumerate(per_class, 1):
            nsd = d if math.isnan(d) else min(1.0, d + 0.05)
            rows.append(
                {"case": f"case_{i}", "class": label, "dsc": d, "nsd": nsd, "tolerance": tol[label - 1]}
            )
    return cases_frame(rows)


GOOD = [(0.80, 0.50), (0.90, 0.70), (0.85, float("nan"))]
BAD = [(0.70, 0.40), (0.75, 0.60), (0.72, 0.30)]


def test_cases_frame_columns_and_validation():
    df = _scores(GOOD)
    assert list(df.columns) == ["case", "class", "dsc", "nsd", "tolerance"]
    assert df["class"].dtype.kind == "i" and df["dsc"].isna().sum() == 1
    with pytest.raises(DataError, match="lacks"):
        cases_frame([{"case": "a", "class": 1, "dsc": 0.5}])
    with pytest.raises(DataError, match="fraction"):
        leaderboard(
            {"x": cases_frame([{"case": "a", "class": 1, "dsc": 85.0, "nsd": 0.9, "tolerance": 1}])}, "t"
        )


def test_leaderboard_ranks_and_layout():
    board = leaderboard({"worse": _scores(BAD), "better": _scores(GOOD)}, "Pancreas")
    assert list(board.columns) == ["rank", "method", *TWO_CLASS]
    assert list(board["method"]) == ["better", "worse"] and list(board["rank"]) == [1, 2]
    best = board.iloc[0]
    assert best["DSC1"] == 85.0  # percent, mean over cases
    assert best["DSC2"] == 60.0  # the NaN (both empty) case is left out
    assert best["DSC avg"] == 72.5
    assert best["NSD2"] == 65.0
    one = leaderboard({"a": _scores([(0.5,), (0.7,)], tol=(1.0,))}, "Spleen")
    assert list(one.columns) == ["rank", "method", "DSC1", "NSD1"]
    tied = leaderboard({"a": _scores(BAD), "b": _scores(BAD), "c": _scores(GOOD)}, "x")
    assert list(tied["rank"]) == [1, 2, 2]


def test_leaderboard_with_paper_reference():
    board = leaderboard({"mine": _scores(GOOD)}, "Task07_Pancreas", reference=True)
    assert list(board.columns) == ["rank", "method", "source", *TWO_CLASS]
    assert len(board) == 7 and list(board["rank"]) == list(range(1, 8))
    paper = board[board["source"] == "paper Table 2"]
    assert sorted(paper["method"]) == sorted(METHODS)
    mine = board[board["source"] == "this run"]
    assert list(mine["method"]) == ["mine"]
    assert board["DSC avg"].is_monotonic_decreasing
    assert board.loc[board["method"] == "DiNTS", "DSC avg"].item() == 68.19
    with pytest.raises(DataError, match="do not compare"):
        leaderboard({"mine": _scores([(0.5,)], tol=(1.0,))}, "Pancreas", reference=True)
    with pytest.raises(UnknownTaskError):
        leaderboard({"mine": _scores(GOOD)}, "Kidney", reference=True)


def test_summary_nan_handling():
    s = summary(_scores(GOOD), {1: "pancreas", 2: "cancer"})
    json.dumps(s, allow_nan=False)
    assert s["n_cases"] == 3 and "excluded" in s["nan_policy"]
    cancer = s["classes"]["cancer"]
    assert cancer["label"] == 2 and cancer["tolerance"] == 2.0
    assert cancer["dsc"]["n"] == 2 and cancer["dsc"]["n_nan"] == 1
    assert cancer["dsc"]["mean"] == pytest.approx(0.6) and cancer["dsc"]["median"] == pytest.approx(0.6)
    assert cancer["dsc"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s["classes"]["pancreas"]["dsc"]["n_nan"] == 0
    assert s["mean_over_classes"]["dsc"] == pytest.approx((0.85 + 0.6) / 2)
    empty = summary(_scores([(0.5, float("nan"))]), None)
    assert empty["classes"]["class 2"]["dsc"] == {
        "mean": None,
        "median": None,
        "std": None,
        "min": None,
        "max": None,
        "n": 0,
        "n_nan": 1,
    }


def _pipe_rows(md: str) -> list[list[str]]:
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    for ln in table:
        assert ln.endswith("|"), ln
    rows = [[c.strip() for c in ln[1:-1].split("|")] for ln in table]
    assert len({len(r) for r in rows}) == 1
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]), rows[1]
    return [rows[0], *rows[2:]]


def test_write_report_files(tmp_path):
    frames = {"better": _scores(GOOD), "worse": _scores(BAD)}
    paths = write_report(tmp_path / "rep", frames, "Pancreas", MSD_CLASSES["Pancreas"], reference=True)
    assert set(paths) == {"cases", "summary", "leaderboard_csv", "leaderboard_md"}
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(p.name for p in paths.values())

    cases = pd.read_csv(paths["cases"])
    assert list(cases.columns) == ["method", "case", "class", "dsc", "nsd", "tolerance"] and len(cases) == 12
    summ = json.loads(paths["summary"].read_text())
    assert summ["task"] == "Pancreas" and set(summ["methods"]) == {"better", "worse"}

    csv = pd.read_csv(paths["leaderboard_csv"])
    md = paths["leaderboard_md"].read_text()
    header, *body = _pipe_rows(md)
    assert header == list(csv.columns) == ["rank", "method", "source", *TWO_CLASS]
    assert len(body) == len(csv) == 8
    for cells, (_, row) in zip(body, csv.iterrows()):
        for cell, col in zip(cells, csv.columns):
            if isinstance(row[col], str):
                assert cell == row[col]
            else:
                assert float(cell) == pytest.approx(float(row[col]), abs=1e-9)
    assert "83.605" not in md  # Liver is not this task; Pancreas numbers are 2-decimal
    assert "81.02" in md and "this run" in md

    single = write_report(tmp_path / "one", {"only": _scores(GOOD)}, "Pancreas", None)
    assert "method" not in pd.read_csv(single["cases"]).columns
    assert not [p for p in (tmp_path / "one").iterdir() if p.name.endswith(".tmp")]


def test_markdown_table_keeps_printed_precision():
    md = markdown_table(paper_rows("Liver"))
    assert "83.605" in md and "| Kim et al" in md
    assert len(_pipe_rows(md)) == 7
    assert "a \\| b" in markdown_table(pd.DataFrame({"x": ["a | b"], "y": [float("nan")]}))


# ---------------------------------------------------------------------------- figures


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_search_curves_png(tmp_path):
    rows = []
    for it in range(9, 300, 10):
        row = {"iteration": it, "phase": "warm-up" if it < 50 else "weights" if it < 150 else "joint"}
        row.update({"lr": 0.1, "L_seg": 1 / (1 + it / 80)})
        if it >= 30:  # architecture terms are missing (empty cells) in the first rows
            row.update({"L_entropy_alpha": 1.5 - it / 400, "L_entropy_eta": 0.7 - it / 600})
            row.update({"L_topology": 0.0 if it > 200 else 0.1, "L_memory": 0.02})
            row.update({"memory_ratio": 0.8 - it / 1500, "gap": max(0, 8 - it // 40)})
        row["train_dice"] = min(1.0, it / 300)
        rows.append(row)
    log = tmp_path / "log.csv"
    pd.DataFrame(rows).to_csv(log, index=False)
    assert ",," in log.read_text()
    out = search_curves(log, tmp_path / "fig" / "search.png", sigma=0.5)
    assert out == tmp_path / "fig" / "search.png"
    _assert_png(out)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError):
        search_curves(tmp_path / "empty.csv", tmp_path / "x.png")


def test_dice_distribution_png(tmp_path):
    one = _scores(GOOD)
    _assert_png(dice_distribution(one, tmp_path / "one.png", {1: "pancreas", 2: "cancer"}))
    both = pd.concat([one.assign(method="a"), _scores(BAD).assign(method="b")], ignore_index=True)
    _assert_png(dice_distribution(both, tmp_path / "both.png", None))


@pytest.mark.skipif(not PAPER_TXT.exists(), reason="paper text (../shared/paper) not beside the clone")
def test_table1_transcription_matches_the_text():
    from nastk.report.paper import table1_rows

    text = PAPER_TXT.read_text(encoding="utf-8")
    block = text[text.index("Model\tFLOPs (G)") :].split("\n\n")[0].splitlines()[1:]
    printed = [[c.strip() for c in line.split("\t")] for line in block]
    rows = table1_rows()
    assert len(printed) == len(rows) == 6
    for cells, (_, row) in zip(printed, rows.iterrows()):
        numbers = [None if c == "-" else float(c) for c in cells[1:]]
        mine = [row[c] for c in ("GMACs", "params_M", "est_train_MB", "DSC1", "DSC2", "DSC avg")]
        assert [None if np.isnan(v) else v for v in mine] == numbers, cells[0]
        if numbers[3] is not None:  # Avg. is the mean of the two classes, to the printed rounding
            assert abs((numbers[3] + numbers[4]) / 2 - numbers[5]) <= 0.0051
