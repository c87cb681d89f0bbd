"""A real decoder that counts what it decodes, for tests of how many decodes a render costs."""

from __future__ import annotations

import torch

from painter.decode import Decoder


class CountingDecoder(Decoder):
    """The real decoder, counting the canvases it decodes."""

    decoded = 0

    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        self.decoded += canvases.shape[0]
        return super().decode_float(canvases)
