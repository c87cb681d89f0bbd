"""Real parts that count or record what they do: decodes a render costs, the dtype an encode ran in."""

from __future__ import annotations

import torch

from painter.decode import Decoder


class CountingDecoder(Decoder):
    """The real decoder, counting the canvases it decodes."""

    decoded = 0

    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        self.decoded += canvases.shape[0]
        return super().decode_float(canvases)


def encode_recording_dtype(model, picture) -> tuple[torch.Tensor, list[torch.dtype]]:
    """``encode_picture`` of the real VAE, with the dtype each call of its encoder saw."""
    from bot.paint_job import encode_picture

    seen: list[torch.dtype] = []
    hook = model.vae.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    try:
        return encode_picture(model, picture), seen
    finally:
        hook.remove()
