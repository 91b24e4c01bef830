"""``space.params`` of a DiNTS spec: below the space, the supernet and the losses, which all read it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DiNTSParams(BaseModel):
    """``space.params`` of a spec. Defaults are the paper's search setting (Sec. 4.1)."""

    model_config = ConfigDict(extra="forbid")
    layers: int = Field(12, ge=1, description="L, the number of layers (paper: 12).")
    depths: int = Field(4, ge=2, description="D, the number of resolutions (paper: 4).")
    filters: int = Field(
        16, ge=1, description="Filters at input scale; depth d has filters*2^(d+1) (paper: 16)."
    )
