"""DiNTS (He et al., CVPR 2021) for nastk: search space, losses, decoding. Registered via entry points."""

from nastk_dints.architecture import Architecture
from nastk_dints.discretize import decode

__all__ = ["Architecture", "decode"]
