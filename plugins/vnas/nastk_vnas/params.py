"""``space.params`` of a ``vnas`` spec."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VNASParams(BaseModel):
    """The fixed skeleton; the op of every searched layer is what the search decides."""

    model_config = ConfigDict(extra="forbid")
    depths: int = Field(4, ge=2, le=6, description="Resolution levels of the encoder-decoder (V-NAS: 4).")
    filters: int = Field(16, ge=1, description="Channels at input resolution; level d has filters*2^d.")
    convs: int = Field(
        2, ge=1, le=4, description="Searched convolution layers per level, encoder and decoder."
    )
    init_std: float = Field(
        0.01, ge=0, description="Std of the architecture logits' N(1, std) initialisation (DiNTS Sec. 4.1)."
    )
