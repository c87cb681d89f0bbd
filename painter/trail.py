"""The x0-hat trail of one generation: what the painter paints from.

A trail is the sequence of the model's predicted final images (x0-hat), one per
denoising step, in the space the decoder reads (SD latents, or RGB pixels for the
closed-form model). Its last entry is the generation's final output, so an
animation that ends on the trail ends on the image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


class TrailError(ValueError):
    """A trail file that cannot be read, or two trails that cannot be combined."""


@dataclass
class TrailMeta:
    """Everything needed to decode a trail and to say how it was made."""

    model_id: str = ""
    vae_id: str = ""
    # Latent scaling of the VAE (painter.decode.LatentScaling): decode(latent / scaling_factor
    # + shift_factor), or per channel latent * latents_std / scaling_factor + latents_mean.
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    # "latent" (decode with the VAE) or "pixel" (RGB in [-1, 1], no decoder).
    space: str = "latent"
    scheduler: str = ""
    prediction_type: str = "epsilon"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 0
    guidance: float = 0.0
    width: int = 0
    height: int = 0
    strength: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrailMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Trail:
    """x0-hat per step, ``latents[T, C, H, W]`` (float32, CPU), with its timesteps."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    meta: TrailMeta

    def __post_init__(self) -> None:
        if self.latents.ndim != 4:
            raise TrailError(f"trail latents must be [T, C, H, W], got shape {tuple(self.latents.shape)}")
        if self.timesteps.shape[0] != self.latents.shape[0]:
            raise TrailError(
                f"trail has {self.latents.shape[0]} latents but {self.timesteps.shape[0]} timesteps"
            )

    @property
    def final(self) -> torch.Tensor:
        """The generation's output latent (the last entry)."""
        return self.latents[-1]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.latents.shape
        return (c, h, w)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def save(self, path: str | Path) -> Path:
        """Write the trail as safetensors with its metadata as JSON in the header."""
        path = Path(path)
        metadata = {
            "format": "latent-painter-trail",
            "version": str(FORMAT_VERSION),
            "meta": json.dumps(asdict(self.meta), sort_keys=True),
        }
        tensors = {
            "latents": self.latents.detach().to("cpu", torch.float32).contiguous(),
            "timesteps": self.timesteps.detach().to("cpu", torch.float64).contiguous(),
        }
        tmp = path.with_name(path.name + ".partial")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trail:
        """Read a trail written by :meth:`save`; a missing or damaged file raises :class:`TrailError`."""
        path = Path(path)
        if not path.is_file():
            raise TrailError(f"trail file not found: {path}")
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise TrailError(f"{path} is not a readable trail file (damaged or truncated): {exc}") from exc
        if metadata.get("format") != "latent-painter-trail":
            raise TrailError(f"{path} is a safetensors file but not a Latent Painter trail")
        if "latents" not in tensors or "timesteps" not in tensors:
            raise TrailError(f"{path} lacks the latents or timesteps tensor")
        try:
            meta = TrailMeta.from_dict(json.loads(metadata.get("meta", "{}")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise TrailError(f"{path} has unreadable trail metadata: {exc}") from exc
        return cls(latents=tensors["latents"], timesteps=tensors["timesteps"], meta=meta)
