"""painter.fast_render: exact rendering decodes every frame; fast rendering decodes one key per run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from painter.decode import Decoder
from painter.effects import paint
from painter.fast_render import psnr, render_batches
from tests.reference_strokes import converging_plan


class CountingDecoder(Decoder):
    """The real decoder, counting the canvases it decodes."""

    decoded = 0

    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        self.decoded += canvases.shape[0]
        return super().decode_float(canvases)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny decodes run fastest on one thread; two spin-wait badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoder(tiny_model: Path) -> CountingDecoder:
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae")
    return CountingDecoder(vae, scaling_factor=float(vae.config.scaling_factor), batch_size=4)


PLAN = converging_plan(steps=6, channels=4, size=8, seed=2)
START = torch.zeros(PLAN.shape[1:])


def frames(count: int | None = None):
    """The strokes effect's frames: natural length (87 frames in 17 runs of ~5), or ``count``."""
    return list(paint(PLAN, "strokes", frames=count, strokes_per_frame=2))


@pytest.fixture(scope="module")
def fl() -> list:
    return frames()


@pytest.fixture(scope="module")
def exact(fl: list, decoder: CountingDecoder) -> torch.Tensor:
    """Every frame decoded on its own: what fast rendering approximates."""
    return decoder.decode_float(torch.stack([f.canvas for f in fl]))


def rendered(frame_list, decoder, **kwargs):
    out_frames, out_rgb, sizes = [], [], []
    for batch, rgb in render_batches(iter(frame_list), decoder, start=START, **kwargs):
        assert rgb.shape[0] == len(batch)
        sizes.append(len(batch))
        out_frames += batch
        out_rgb.append(rgb)
    return out_frames, torch.cat(out_rgb), sizes


def runs(frame_list) -> list[int]:
    """Index of the last frame of each run: same step, same channels touched (empty frames join)."""
    ends, key = [], None
    for i, f in enumerate(frame_list):
        touched = tuple(f.mask.flatten(1).any(dim=1).nonzero().flatten().tolist())
        this = (f.step, touched if touched or key is None else key[1])
        if key is not None and this != key:
            ends.append(i - 1)
        key = this
    return ends + [len(frame_list) - 1]


def test_exact_mode_decodes_every_frame_in_order_and_in_batches(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    got, rgb, sizes = rendered(fl, decoder, batch_size=5)
    assert [id(f) for f in got] == [id(f) for f in fl]
    assert max(sizes) == 5 and sum(sizes) == len(fl)
    assert torch.allclose(rgb, exact, atol=1e-5)
    assert rgb.shape[1:] == (3, 64, 64) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_fast_mode_decodes_one_key_per_run_and_keys_are_exact(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    ends = runs(fl)
    assert 1 < len(ends) < len(fl) // 2  # the test has runs of several frames to composite
    decoder.decoded = 0
    got, rgb, _ = rendered(fl, decoder, mode="fast", batch_size=4)
    assert decoder.decoded == len(ends) + 1  # every key, and the start canvas once
    assert [id(f) for f in got] == [id(f) for f in fl]
    for i in ends:
        assert torch.allclose(rgb[i], exact[i], atol=1e-5), f"key frame {i}"
    # The last frame is the finished picture, exactly.
    assert torch.allclose(rgb[-1], decoder.decode_float(PLAN[-1:])[0], atol=1e-5)


def test_fast_mode_composites_between_the_previous_key_and_the_next(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    ends = runs(fl)
    _, rgb, _ = rendered(fl, decoder, mode="fast")
    # The longest run: frames lo..hi, composited from the key before it to its own.
    bounds = list(zip([-1, *ends[:-1]], ends, strict=True))
    before, hi = max(bounds, key=lambda b: b[1] - b[0])
    lo = before + 1
    assert hi - lo >= 2
    previous = decoder.decode_float(START[None])[0] if before < 0 else exact[before]
    key = exact[hi]
    low, high = torch.minimum(previous, key) - 1e-5, torch.maximum(previous, key) + 1e-5
    for i in range(lo, hi):
        assert bool(((rgb[i] >= low) & (rgb[i] <= high)).all()), f"frame {i}"
    # Pixels far from every cell the run's first frame touched still show the previous key.
    touched = fl[lo].mask.any(dim=0).float()[None, None]
    near = torch.nn.functional.interpolate(touched, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    far = near[0, 0] == 0
    assert bool(far.any()) and not bool(far.all())
    assert torch.allclose(rgb[lo][:, far], previous[:, far], atol=1e-5)
    assert not torch.allclose(rgb[lo], previous, atol=1e-3)


def test_key_every_one_is_exact_rendering(decoder: CountingDecoder) -> None:
    fl = frames(12)
    _, fast, _ = rendered(fl, decoder, mode="fast", key_every=1)
    _, exact, _ = rendered(fl, decoder, mode="exact")
    assert torch.allclose(fast, exact, atol=1e-5)


def test_key_every_caps_the_run_length(decoder: CountingDecoder, fl: list) -> None:
    decoder.decoded = 0
    rendered(fl, decoder, mode="fast")
    per_run = decoder.decoded
    decoder.decoded = 0
    rendered(fl, decoder, mode="fast", key_every=3)
    assert decoder.decoded > per_run
    assert decoder.decoded >= math.ceil(len(fl) / 3) + 1


def test_rgb_canvases_need_no_decoder_so_fast_is_exact() -> None:
    plan = converging_plan(steps=4, channels=3, size=16, seed=3).clamp(-1, 1)
    fl = list(paint(plan, "strokes", frames=10, channels="joint"))
    rgb_decoder = CountingDecoder(None)
    start = torch.zeros(plan.shape[1:])
    fast = torch.cat([rgb for _, rgb in render_batches(fl, rgb_decoder, start=start, mode="fast")])
    exact = torch.cat([rgb for _, rgb in render_batches(fl, rgb_decoder, start=start)])
    assert torch.equal(fast, exact)
    assert torch.equal(exact, ((torch.stack([f.canvas for f in fl]) + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "quick"}, "unknown render mode 'quick'"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"key_every": 0}, "key_every must be at least 1"),
    ],
)
def test_bad_settings_raise_before_any_decode(kwargs: dict, message: str) -> None:
    counting = CountingDecoder(None)
    with pytest.raises(ValueError, match=message):
        render_batches(iter(frames(4)), counting, start=START, **kwargs)
    assert counting.decoded == 0


def test_psnr_per_image() -> None:
    a = torch.zeros(3, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1  # mse 0.01: 20 dB
    b[2] += 0.01  # mse 1e-4: 40 dB
    got = psnr(a, b)
    assert math.isinf(float(got[0]))
    assert torch.allclose(got[1:], torch.tensor([20.0, 40.0]), atol=1e-3)
