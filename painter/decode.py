"""Decode canvases to RGB, in batches, and lay unpainted cells onto paper."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_PAPER = (245, 240, 230)

log = logging.getLogger(__name__)


def parse_colour(text: str) -> tuple[int, int, int]:
    """``#rrggbb`` to an RGB triple; a ValueError names the bad value."""
    value = text.strip().lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {text!r} must be #rrggbb")
    try:
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    except ValueError:
        raise ValueError(f"colour {text!r} must be #rrggbb") from None


@dataclass(frozen=True)
class LatentScaling:
    """How a VAE's latents are scaled into the space the UNet denoises, and back.

    diffusers' pipelines decode ``latent / scaling_factor + shift_factor`` (SD 1.x/2.x,
    SDXL, SD3), or, for VAEs whose config carries per-channel ``latents_mean`` and
    ``latents_std`` (Playground v2.5 and other SDXL fine-tunes),
    ``latent * latents_std / scaling_factor + latents_mean``. Decoding such a VAE's
    latents with the scalar rule alone gives washed-out, colour-shifted pictures.
    """

    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, vae_config: Any) -> LatentScaling:
        """The scaling a VAE's ``config`` asks for (the rule its pipelines apply)."""
        get = vae_config.get if hasattr(vae_config, "get") else lambda k, d=None: getattr(vae_config, k, d)
        mean, std = get("latents_mean", None), get("latents_std", None)
        per_channel = mean is not None and std is not None  # diffusers needs both, as here
        return cls(
            scaling_factor=float(get("scaling_factor", 1.0) or 1.0),
            shift_factor=float(get("shift_factor", 0.0) or 0.0),
            latents_mean=tuple(float(v) for v in mean) if per_channel else None,
            latents_std=tuple(float(v) for v in std) if per_channel else None,
        )

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (for :class:`Decoder` and ``TrailMeta``)."""
        out = asdict(self)
        for key in ("latents_mean", "latents_std"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    def _per_channel(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.latents_mean is not None and self.latents_std is not None
        channels = like.shape[-3]
        if len(self.latents_mean) != channels or len(self.latents_std) != channels:
            raise ValueError(
                f"the VAE's latents_mean/latents_std have {len(self.latents_mean)}/{len(self.latents_std)} "
                f"values, but its latents have {channels} channels"
            )
        shape = (channels, 1, 1)
        mean = torch.tensor(self.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """The UNet's latents ``[..., C, h, w]`` as the VAE's decoder reads them."""
        if self.latents_mean is None:
            return latents / self.scaling_factor + self.shift_factor
        mean, std = self._per_channel(latents)
        return latents * std / self.scaling_factor + mean

    def to_unet(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's latents ``[..., C, h, w]`` in the space the UNet denoises."""
        if self.latents_mean is None:
            return (z - self.shift_factor) * self.scaling_factor
        mean, std = self._per_channel(z)
        return (z - mean) * self.scaling_factor / std


class Decoder:
    """Turns canvases ``[B, C, h, w]`` in a trail's space into RGB images ``[B, H, W, 3]`` uint8.

    ``vae`` is the pipeline's ``AutoencoderKL`` or an ``AutoencoderTiny`` (TAESD);
    ``None`` means the canvas is already RGB in [-1, 1] (the closed-form model).

    ``compile`` decodes through ``torch.compile`` of the VAE's ``decode`` (True: the
    inductor backend with the VAE in channels_last; a string names another backend).
    On an H100 a /paint job decoded 1.5-2x (SD VAE) and 2.2x (TAESD) faster than
    eager fp16 (bench/RESULTS.md), for a one-off compile of ~5-30 s per VAE and canvas
    size, so it pays in a long-running worker, not in a one-shot command. The compiled
    decode is kept per VAE for the process, and every call gets a full batch (the last
    one padded) so one compilation serves every job of that size. Where compiling
    fails (no C compiler for Triton, an unsupported GPU) the decoder says so in the log
    and decodes eagerly from then on, for every Decoder of that VAE.

    ``memory_mb`` bounds what decoding may add to the GPU's peak memory: the batch
    shrinks below ``batch_size`` to fit, measured on the GPU (SD 1.5's VAE at 512² in
    fp16 with batches of 8 added ~7.7 GB over the plain generation on an H100; one
    frame at a time ~0.8 GB). 0: no bound. A batch that still runs out of GPU memory
    is halved and retried, never failing a job that one frame at a time can finish.

    ``upcast``: decode in fp32 when ``dtype`` is fp16 (a VAE that overflows in fp16). The
    pipeline decides, as in diffusers: pass :attr:`painter.models.LoadedModel.upcasts_vae`.
    ``None`` (a VAE on its own) follows the VAE's config only where it sets
    ``force_upcast`` itself (:func:`asks_for_upcast`).
    """

    def __init__(
        self,
        vae: Any | None = None,
        *,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        compile: bool | str | Callable[..., Any] = False,
        memory_mb: int = 0,
        upcast: bool | None = None,
    ) -> None:
        self.vae = vae
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tiny = vae is not None and type(vae).__name__ == "AutoencoderTiny"
        # TAESD reads the UNet's scaled latents as they are.
        per_channel = latents_mean is not None and latents_std is not None
        self.scaling = (
            LatentScaling()
            if self.tiny
            else LatentScaling(
                scaling_factor=scaling_factor,
                shift_factor=shift_factor,
                latents_mean=tuple(latents_mean) if per_channel else None,  # type: ignore[arg-type]
                latents_std=tuple(latents_std) if per_channel else None,  # type: ignore[arg-type]
            )
        )
        self.dtype = dtype
        if upcast is None:
            upcast = vae is not None and asks_for_upcast(vae)
        if vae is not None and dtype == torch.float16 and upcast:
            self.dtype = torch.float32
        if vae is not None:
            if vae.device != self.device or vae.dtype != self.dtype:
                self.vae = vae.to(self.device, self.dtype)
            self.vae.eval()
        self.scale = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        self.memory_bytes = memory_mb * 2**20
        self.compiled = bool(compile) and self.vae is not None and self.vae not in _COMPILE_FAILED
        self._decode: Callable[[torch.Tensor], Any] | None = None
        if self.vae is not None:
            backend = "inductor" if compile is True else compile
            self._decode = compiled_decode(self.vae, backend) if self.compiled else self.vae.decode

    @torch.inference_mode()
    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], ``[B, 3, H, W]`` on the decoder's device, float32."""
        self._keep_vae_in_dtype()
        out = []
        size = self.chunk_size(canvases)
        done = 0
        while done < canvases.shape[0]:
            chunk = canvases[done : done + size].to(self.device, self.dtype)
            if self._decode is None:
                rgb = chunk
            else:
                try:
                    rgb = self._vae_decode(chunk, size)
                except torch.cuda.OutOfMemoryError:
                    if size == 1:
                        raise
                    # Another process took the memory, or the estimate was off: halve and go on.
                    size = self.batch_size = max(1, size // 2)
                    torch.cuda.empty_cache()
                    continue
            out.append(((rgb.float() + 1) / 2).clamp_(0, 1))
            done += chunk.shape[0]
        return torch.cat(out)

    def _keep_vae_in_dtype(self) -> None:
        """Put the VAE back on this decoder's device and dtype if someone re-cast it.

        The VAE is the pipeline's own, shared: SDXL's img2img casts it to fp32 to encode
        its picture and back to the pipeline's fp16 afterwards, so a decoder made before
        that generation (a job's is) would feed fp32 latents to fp16 weights.
        """
        vae = self.vae
        if vae is not None and (vae.dtype != self.dtype or vae.device != self.device):
            # Outside inference mode: cast there, the weights would become inference tensors
            # and a compiled decode's guards would fail (one recompile, ~28 s on an H100).
            with torch.inference_mode(False):
                vae.to(self.device, self.dtype)

    def _vae_decode(self, chunk: torch.Tensor, size: int) -> torch.Tensor:
        assert self._decode is not None
        count = chunk.shape[0]
        if self.compiled and count < size:
            # A compiled decode is specialised to its batch size: pad rather than recompile.
            chunk = torch.cat([chunk, chunk.new_zeros(size - count, *chunk.shape[1:])])
        z = self.scaling.to_vae(chunk)
        try:
            return self._decode(z).sample[:count]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: decode eagerly instead
            if not self.compiled:
                raise
            log.warning("torch.compile of the decoder failed (%s); decoding without it", _root_cause(exc))
            _COMPILE_FAILED.add(self.vae)
            self.compiled = False
            self._decode = self.vae.decode
            return self._decode(z).sample[:count]

    def chunk_size(self, canvases: torch.Tensor) -> int:
        """Canvases per VAE call for ``canvases`` ``[B, C, h, w]``."""
        if self.vae is None:
            return self.batch_size
        if self.device.type == "cpu" and not self.compiled:
            # On the CPU one canvas per VAE call is fastest: a batch's activations spill out of
            # the caches (bench/bench_decode.py: batch 8 decoded 1.4-1.8x slower than one by one).
            return 1
        if self.device.type != "cuda" or not self.memory_bytes or canvases.shape[0] == 0:
            return self.batch_size
        if canvases.shape[0] == 1 and not self.compiled:
            return 1  # one picture (the delivered image): nothing to fit
        return self._fitted_batch(canvases[:1])

    def _fitted_batch(self, one: torch.Tensor) -> int:
        """The largest batch (up to ``batch_size``) whose decode stays within the memory bound.

        Measured once per VAE, canvas shape and dtype by decoding growing batches (1, 2,
        4, ... of the first canvas) and reading the GPU's peak: a batch may raise the peak
        by at most ``memory_mb`` over what is allocated, and whatever fits under a peak
        that already stood (the generation's) costs nothing and is always allowed. The next
        size is tried only when the last one's growth predicts it fits.
        """
        key = (tuple(one.shape[1:]), self.dtype, self.batch_size, self.memory_bytes)
        known = _FITTED.setdefault(self.vae, {})
        if key in known:
            return known[key]
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < self.batch_size] + [self.batch_size]
        z = self.scaling.to_vae(one.to(self.device, self.dtype))
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        allowed = max(self.memory_bytes, torch.cuda.max_memory_allocated(self.device) - before)
        fitted = 1
        for size in sizes:
            peak_before = torch.cuda.max_memory_allocated(self.device)
            try:
                with torch.inference_mode():
                    self.vae.decode(z.expand(size, *z.shape[1:]).contiguous())
                torch.cuda.synchronize(self.device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            peak = torch.cuda.max_memory_allocated(self.device)
            if peak - before > allowed:
                break
            fitted = size
            if peak > peak_before and 2 * (peak - before) > allowed:
                break  # this batch set the peak: twice the batch would pass the bound
        known[key] = fitted
        return fitted

    def decode(self, canvases: torch.Tensor) -> np.ndarray:
        """RGB uint8 ``[B, H, W, 3]`` on the CPU."""
        return to_uint8(self.decode_float(canvases))


_COMPILED: weakref.WeakKeyDictionary[Any, dict[Any, Callable[..., Any]]] = weakref.WeakKeyDictionary()
_COMPILE_LOCK = threading.Lock()
# VAE -> {(latent shape, dtype, batch_size, bound): the batch fitted to the GPU memory bound}
_FITTED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], int]] = weakref.WeakKeyDictionary()
# VAEs whose compiled decode failed once: decoded eagerly from then on.
_COMPILE_FAILED: weakref.WeakSet[Any] = weakref.WeakSet()


def compiled_decode(
    vae: Any, backend: str | Callable[..., Any] = "inductor"
) -> Callable[[torch.Tensor], Any]:
    """``torch.compile`` of ``vae.decode``, made once per VAE and backend for the process.

    Compilation itself happens on the first call for each batch shape (tens of seconds
    with inductor); every ``Decoder`` of this VAE shares the result. With inductor the
    VAE's weights go channels_last, which compiled convolutions prefer (TAESD: 1.5x
    eager; the SD VAE gains only compiled).
    """
    with _COMPILE_LOCK:
        per_backend = _COMPILED.setdefault(vae, {})
        if backend not in per_backend:
            if backend == "inductor":
                vae.to(memory_format=torch.channels_last)
            # The unbound method, so the cache holds no reference to the VAE it is keyed by.
            per_backend[backend] = torch.compile(type(vae).decode, backend=backend, dynamic=False)
        return partial(per_backend[backend], vae)


def _root_cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause (dynamo wraps a backend's error)."""
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def asks_for_upcast(vae: Any) -> bool:
    """Whether the VAE's own config says it overflows in fp16 (SDXL's does), for a VAE on its own.

    diffusers defaults ``force_upcast`` to True for configs that never mention it (SD
    1.5's), and SD 1.5's pipeline decodes in fp16 regardless: only an explicit setting
    counts here. ``save_pretrained`` writes the default out, though, so a pipeline's VAE
    is better judged with its pipeline (:attr:`painter.models.LoadedModel.upcasts_vae`).
    """
    config = vae.config
    defaulted = set(config.get("_use_default_values", []) or [])
    return bool(config.get("force_upcast", False)) and "force_upcast" not in defaulted


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` floats in [0, 1] to ``[B, H, W, 3]`` uint8."""
    # Contiguous here, in one batched copy, so the encoder need not copy each frame.
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def lay_on_paper(
    rgb: torch.Tensor,
    painted: torch.Tensor,
    paper: tuple[int, int, int] | torch.Tensor = DEFAULT_PAPER,
) -> torch.Tensor:
    """Show only painted cells: elsewhere the paper, with soft brush edges.

    ``rgb`` is ``[B, 3, H, W]`` in [0, 1]; ``painted`` is ``[B, h, w]`` (bool or
    coverage in [0, 1]) on the canvas grid. ``paper`` is a colour, or a picture
    ``[3, H, W]`` in [0, 1] (repainting a photo: it shows until painted over). The
    all-zero latent does not decode to white, so this is what makes a fresh canvas
    look like blank paper.
    """
    height, width = rgb.shape[-2:]
    cover = painted.to(rgb.device, torch.float32)[:, None]
    if cover.shape[-2:] != (height, width):
        cover = F.interpolate(cover, size=(height, width), mode="bilinear", align_corners=False)
    if isinstance(paper, torch.Tensor):
        backdrop = paper.to(rgb.device, torch.float32)[None]
    else:
        backdrop = torch.tensor(paper, device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1) / 255
    return rgb * cover + backdrop * (1 - cover)
