"""painter.render: exact rendering decodes every frame; adaptive rendering decodes some,
interpolates the rest and checks itself, never showing a frame far from its decode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from painter.decode import Decoder, lay_on_paper
from painter.effects import paint
from painter.render import progress, psnr, render_batches
from tests.counting import CountingDecoder
from tests.reference_strokes import converging_plan


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


@pytest.fixture(scope="module")
def taesd_decoder(tiny_taesd: Path) -> CountingDecoder:
    """A tiny TAESD: a decoder far more local than the tiny SD VAE with random weights."""
    return CountingDecoder(AutoencoderTiny.from_pretrained(tiny_taesd), batch_size=4)


PLAN = converging_plan(steps=6, channels=4, size=8, seed=2)
START = torch.zeros(PLAN.shape[1:])


def frames(count: int | None = None) -> list:
    """The strokes effect's frames: natural length (87 frames), or ``count``."""
    return list(paint(PLAN, "strokes", frames=count, strokes_per_frame=2))


@pytest.fixture(scope="module")
def fl() -> list:
    return frames()


def shown(frame_list: list, decoder: Decoder) -> torch.Tensor:
    """Every frame decoded on its own and laid on paper as the viewer sees it: the reference."""
    painted = torch.zeros(PLAN.shape[-2:], dtype=torch.bool)
    covers = []
    for f in frame_list:
        painted |= f.mask.any(dim=0)
        covers.append(painted.clone())
    covers[-1] = torch.ones_like(painted)  # the finished picture shows everywhere
    rgb = Decoder.decode_float(decoder, torch.stack([f.canvas for f in frame_list]))
    return lay_on_paper(rgb, torch.stack(covers))


@pytest.fixture(scope="module")
def exact(fl: list, decoder: CountingDecoder) -> torch.Tensor:
    return shown(fl, decoder)


def rendered(frame_list, decoder, **kwargs):
    out_frames, out_rgb, sizes = [], [], []
    for batch, rgb in render_batches(iter(frame_list), decoder, start=START, **kwargs):
        assert rgb.shape[0] == len(batch)
        sizes.append(len(batch))
        out_frames += batch
        out_rgb.append(rgb)
    return out_frames, torch.cat(out_rgb), sizes


def run_ends(frame_list) -> list[int]:
    """Index of each frame after which the step changes or a channel stops being painted."""
    ends, last = [], None
    for i, f in enumerate(frame_list):
        touched = set(f.mask.flatten(1).any(dim=1).nonzero().flatten().tolist())
        if not touched:
            continue  # a frame that changes nothing joins the run before it
        if last is not None and (f.step != last[0] or not last[1] <= touched):
            ends.append(i - 1)
        last = (f.step, touched)
    return ends + [len(frame_list) - 1]


def test_exact_mode_decodes_every_frame_once_in_order_on_paper(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    decoder.decoded = 0
    got, rgb, sizes = rendered(fl, decoder, batch_size=5)
    assert decoder.decoded == len(fl)
    assert [id(f) for f in got] == [id(f) for f in fl]
    assert max(sizes) == 5 and sum(sizes) == len(fl)
    assert torch.allclose(rgb, exact, atol=1e-5)
    assert rgb.shape[1:] == (3, 64, 64) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0
    # Before the first stroke reaches a cell, the cell is paper.
    paper = torch.tensor([245, 240, 230]) / 255
    untouched = ~fl[0].mask.any(dim=0)
    pixel = untouched.nonzero()[0] * 8 + 4
    assert torch.allclose(rgb[0][:, pixel[0], pixel[1]], paper, atol=1e-6)


@pytest.mark.parametrize(("which", "at_most"), [("decoder", 0.9), ("taesd_decoder", 0.5)])
def test_adaptive_mode_decodes_fewer_frames_and_every_frame_stays_close(
    which: str, at_most: float, fl: list, request: pytest.FixtureRequest
) -> None:
    decoder = request.getfixturevalue(which)
    exact = shown(fl, decoder)
    decoder.decoded = 0
    got, rgb, _ = rendered(fl, decoder, mode="adaptive", span=16, tolerance_db=35.0)
    assert [id(f) for f in got] == [id(f) for f in fl]
    # What it is for. The tiny SD VAE with random weights is far from local on an 8x8
    # latent (a stroke covers a good part of it) and saves least; TAESD's is local.
    assert decoder.decoded <= at_most * len(fl)
    scores = psnr(exact, rgb)
    # The check holds interpolated stretches to ~the tolerance; the bar is 30 dB.
    assert float(scores.min()) >= 30.0, scores.min()
    assert torch.allclose(rgb[-1], exact[-1], atol=1e-5)  # the finished picture, exactly
    # Where a channel's strokes end a cell may hold some channels of its new value and
    # not others, which no blend shows: the frame before the next run is decoded.
    for i in run_ends(fl):
        assert torch.allclose(rgb[i], exact[i], atol=1e-5), f"run end {i}"


def test_a_stricter_tolerance_decodes_more_and_an_impossible_one_is_exact(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    counts = []
    for tolerance in (None, 30.0, 45.0):
        decoder.decoded = 0
        rendered(fl, decoder, mode="adaptive", tolerance_db=tolerance)
        counts.append(decoder.decoded)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    # No interpolation holds to 99 dB: every frame is decoded, each once (plus the start
    # canvas), and shows exactly — the adaptive mode never costs more decodes than exact.
    decoder.decoded = 0
    _, rgb, _ = rendered(fl, decoder, mode="adaptive", tolerance_db=99.0, batch_size=3)
    assert decoder.decoded == len(fl) + 1
    assert torch.allclose(rgb, exact, atol=1e-5)


def test_unchecked_interpolation_is_what_the_check_guards_against(
    decoder: CountingDecoder, fl: list, exact: torch.Tensor
) -> None:
    decoder.decoded = 0
    _, unchecked, _ = rendered(fl, decoder, mode="adaptive", span=32, tolerance_db=None)
    # Unchecked, each key (every span's end and every run's) and one midpoint between
    # keys are decoded, and the start canvas.
    keys = len(set(range(31, len(fl), 32)) | set(run_ends(fl)))
    assert decoder.decoded <= 2 * keys + 1
    _, checked, _ = rendered(fl, decoder, mode="adaptive", span=32, tolerance_db=35.0)
    assert float(psnr(exact, unchecked).min()) < float(psnr(exact, checked).min())


def test_a_decoded_start_is_not_decoded_again(decoder: CountingDecoder, fl: list) -> None:
    decoder.decoded = 0
    _, plain, _ = rendered(fl[:20], decoder, mode="adaptive")
    without = decoder.decoded
    start_rgb = Decoder.decode_float(decoder, START[None])
    decoder.decoded = 0
    _, given, _ = rendered(fl[:20], decoder, mode="adaptive", start_rgb=start_rgb)
    assert decoder.decoded == without - 1
    assert torch.allclose(plain, given, atol=1e-6)


def test_progress_per_cell() -> None:
    lo = torch.zeros(4, 3, 3)
    hi = torch.ones(4, 3, 3)
    hi[:, 2, 2] = 0  # a cell that does not change between the two decoded frames
    t = torch.zeros(4, 3, 3)
    t[:, 0, 0] = 1  # a stroke has painted this cell's final value
    t[:, 1, 1] = 0.25  # a fade a quarter of the way
    t[:, 0, 1] = 2  # overshoot still reads as done
    got = progress(lo, t, hi, reach=1)
    assert got[0, 0] == 1 and got[0, 1] == 1 and got[1, 1] == 0.25
    assert got[1, 0] == 0 and got[2, 2] == 0
    # Over a patch, a still cell beside a stroke takes the stroke's progress.
    spread = progress(lo, t, hi, reach=3)
    assert 0 < float(spread[1, 0]) < 1 and float(spread[2, 2]) > 0


def test_rgb_canvases_need_no_decoder_so_adaptive_is_exact() -> None:
    plan = converging_plan(steps=4, channels=3, size=16, seed=3).clamp(-1, 1)
    fl = list(paint(plan, "strokes", frames=10, channels="joint"))
    rgb_decoder = CountingDecoder(None)
    start = torch.zeros(plan.shape[1:])
    kw = {"start": start, "paper": (0, 0, 0)}
    adaptive = torch.cat([rgb for _, rgb in render_batches(fl, rgb_decoder, mode="adaptive", **kw)])
    exact = torch.cat([rgb for _, rgb in render_batches(fl, rgb_decoder, **kw)])
    assert torch.equal(adaptive, exact)
    assert torch.equal(exact[-1], ((fl[-1].canvas + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "quick"}, "unknown render mode 'quick'"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"mode": "adaptive", "span": 1}, "span must be at least 2"),
    ],
)
def test_bad_settings_raise_before_any_decode(kwargs: dict, message: str, decoder: CountingDecoder) -> None:
    decoder.decoded = 0
    with pytest.raises(ValueError, match=message):
        render_batches(iter(frames(4)), decoder, start=START, **kwargs)
    assert decoder.decoded == 0


def test_psnr_per_image() -> None:
    a = torch.zeros(3, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1  # mse 0.01: 20 dB
    b[2] += 0.01  # mse 1e-4: 40 dB
    got = psnr(a, b)
    assert math.isinf(float(got[0]))
    assert torch.allclose(got[1:], torch.tensor([20.0, 40.0]), atol=1e-3)
