"""The DiNTS discretizer checks the arrays of an arch_params.npz itself: nastk decode only reads the file."""

import numpy as np
import pytest

from nastk.errors import DataError
from nastk_dints.discretize import DISCRETIZER


def test_arrays_decide_the_layers():
    arrays = {"edge_logits": np.zeros((3, 10)), "op_logits": np.zeros((3, 10, 2))}
    assert DISCRETIZER.check_arrays(arrays, ["skip", "conv3x3x3"]) == {"layers": 3}


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"edge_logits": np.zeros((3, 10))}, "missing array 'op_logits' (has: edge_logits)"),
        ({}, "missing array 'edge_logits' (has: none)"),
        ({"edge_logits": np.zeros((3, 10)), "op_logits": np.zeros((3, 10, 4))}, "4 ops but 2 op names"),
    ],
)
def test_missing_or_disagreeing_arrays_are_one_line(arrays, needle):
    with pytest.raises(DataError) as exc:
        DISCRETIZER.check_arrays(arrays, ["skip", "conv3x3x3"])
    assert needle in str(exc.value)
