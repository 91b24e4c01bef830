"""`nastk quickstart` end to end through the real CLI, with an even smaller config."""

import pandas as pd
import yaml

from conftest import run_cli
from tinydata import TINY_SPEC, merged

# The engine tests' tiny spec, with a synthetic task and enough retraining to find the organ.
TINY_QUICKSTART = merged(
    TINY_SPEC,
    {
        "synth": {"cases": 4, "size": 24, "test_cases": 2, "seed": 1},
        "search": {"milestones": [100], "log_every": 2, "checkpoint_every": 4},
        "retrain": {
            "filter_multiplier": 4.0,
            "warmup_iters": 5,
            "iters": 120,
            "milestones": [1000],
            "val_every": 1000,
            "checkpoint_every": 60,
        },
        "inference": {"ensemble": "mean"},
    },
)


def test_quickstart_end_to_end(tmp_path):
    spec = tmp_path / "quickstart.yaml"
    spec.write_text(yaml.safe_dump(TINY_QUICKSTART))
    out = tmp_path / "qs"
    res = run_cli("quickstart", "--spec", spec, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    run = out / "run"
    for path in (
        "arch.json",
        "arch.png",
        "retrain/fold_0/model_final.pt",
        "retrain/fold_1/model_final.pt",
        "predictions/synth_100.nii.gz",
        "predictions/synth_101.nii.gz",
        "report/leaderboard.csv",
        "report/cv_leaderboard.csv",
        "postprocessing.json",
    ):
        assert (run / path).exists(), path
    board = pd.read_csv(run / "report" / "leaderboard.csv")
    # Predicting background everywhere scores 0; this tiny net after 125 iterations reliably finds the organ.
    assert board.loc[0, "DSC avg"] > 20.0, board
    cv = pd.read_csv(run / "report" / "cv_leaderboard.csv")
    assert set(cv["folds"]) == {2} and set(cv["cases"]) == {4}  # every training case, out of fold
    assert "threshold baseline" in res.stdout and "# Cross-validation" in res.stdout
    assert "# Held-out cases" in res.stdout and "post-processing:" in res.stdout
    again = run_cli("quickstart", "--spec", spec, "--out", out, "--quiet")  # finished stages are skipped
    assert again.returncode == 0 and "search done, skipping" in again.stdout
    assert "fold 1 done, skipping" in again.stdout
