"""Transition plans (painter/transition.py) on small synthetic trails built directly."""

from __future__ import annotations

import math

import pytest
import torch

from painter.effects import EFFECTS, paint
from painter.trail import Trail, TrailError, TrailMeta
from painter.transition import (
    TransitionError,
    build_plan,
    chain_plans,
    check_compatible,
    cover_size,
    fit_kind,
    fit_trail,
    resize_trail,
)

VAE = "tiny/vae-a"


def make_trail(
    steps: int,
    *,
    seed: int,
    size: tuple[int, int] = (8, 8),
    channels: int = 4,
    model_id: str = "tiny/unet-a",
    vae_id: str = VAE,
    scaling_factor: float = 0.18215,
    space: str = "latent",
) -> Trail:
    """A trail whose entries are all different, shaped like x0-hat: a coarse start settling on a final."""
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    final = torch.randn(channels, h, w, generator=gen)
    noise = torch.randn(steps, channels, h, w, generator=gen)
    # Entry t is the final plus a shrinking error, so later entries lie closer to the final.
    scale = torch.linspace(1.0, 0.0, steps).view(-1, 1, 1, 1)
    latents = final + noise * scale
    cell = 8 if space == "latent" else 1
    meta = TrailMeta(
        model_id=model_id,
        vae_id=vae_id,
        scaling_factor=scaling_factor,
        space=space,
        prompt=f"trail {seed}",
        seed=seed,
        steps=steps,
        width=w * cell,
        height=h * cell,
    )
    return Trail(latents=latents, timesteps=torch.linspace(999, 0, steps), meta=meta)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum().sqrt())


# --- schedule guidance ------------------------------------------------------------------


def test_full_depth_runs_source_backwards_then_destination_forwards() -> None:
    src, dst = make_trail(6, seed=1), make_trail(5, seed=2)
    plan = build_plan(src, dst)

    assert torch.equal(plan.start, src.final)
    # Backwards from the entry before the final (the canvas already shows the final) to the first.
    assert plan.meta.forward_start == 5
    assert torch.equal(plan.plan[:5], src.latents[:5].flip(0))
    assert torch.equal(plan.plan[4], src.latents[0])
    # Then the whole destination trail forwards, ending exactly on its final.
    assert torch.equal(plan.plan[5:], dst.latents)
    assert torch.equal(plan.plan[-1], dst.final)
    assert len(plan) == len(src) - 1 + len(dst)
    assert not torch.equal(plan.plan[0], plan.start)


@pytest.mark.parametrize(
    ("depth", "back", "forward"),
    [(1.0, 10, 8), (0.5, 5, 4), (0.25, 3, 2), (0.05, 1, 1)],
)
def test_depth_sets_how_far_back_and_where_the_destination_starts(
    depth: float, back: int, forward: int
) -> None:
    src, dst = make_trail(11, seed=3), make_trail(9, seed=4)
    plan = build_plan(src, dst, depth=depth)

    assert plan.meta.forward_start == back
    assert len(plan) == back + forward + 1
    # Backward half: src[T-2], src[T-3], ... down to the depth point src[T-1-back].
    assert torch.equal(plan.plan[:back], src.latents[len(src) - 1 - back : len(src) - 1].flip(0))
    # Forward half enters the destination at the same fraction from its end.
    assert torch.equal(plan.plan[back:], dst.latents[len(dst) - 1 - forward :])
    assert torch.equal(plan.plan[-1], dst.final)
    assert plan.meta.depth == depth


def test_shallower_depth_keeps_more_of_the_source() -> None:
    src, dst = make_trail(21, seed=5), make_trail(21, seed=6)
    # The farthest point the backward half reaches from the source's final.
    reach = []
    for depth in (0.2, 0.5, 1.0):
        plan = build_plan(src, dst, depth=depth)
        reach.append(max(distance(p, src.final) for p in plan.plan[: plan.meta.forward_start]))
    assert reach[0] < reach[1] < reach[2]


def test_single_entry_trails_jump_straight_to_the_destination() -> None:
    src, dst = make_trail(1, seed=7), make_trail(1, seed=8)
    plan = build_plan(src, dst, depth=0.5)
    assert len(plan) == 1
    assert torch.equal(plan.plan[0], dst.final)
    assert torch.equal(plan.start, src.final)


# --- interpolate guidance --------------------------------------------------------------


@pytest.mark.parametrize("interp_steps", [None, 1, 7, 40])
def test_interpolate_moves_monotonically_to_the_destination(interp_steps: int | None) -> None:
    src, dst = make_trail(6, seed=9), make_trail(12, seed=10)
    plan = build_plan(src, dst, guidance="interpolate", interp_steps=interp_steps)

    assert len(plan) == (interp_steps or len(dst))
    assert torch.equal(plan.start, src.final)
    assert torch.equal(plan.plan[-1], dst.final)
    distances = [distance(src.final, dst.final)] + [distance(p, dst.final) for p in plan.plan]
    assert all(b < a for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[-1] == 0.0
    # The targets lie on the straight line between the two finals (no schedule used).
    for k, target in enumerate(plan.plan, start=1):
        expected = torch.lerp(src.final, dst.final, k / len(plan))
        assert torch.allclose(target, expected, atol=1e-6)
    assert plan.meta.guidance == "interpolate"


# --- compatibility ---------------------------------------------------------------------


def test_different_unets_sharing_a_vae_are_compatible() -> None:
    src = make_trail(4, seed=11, model_id="tiny/unet-a")
    dst = make_trail(4, seed=12, model_id="tiny/unet-b")
    check_compatible(src, dst)
    plan = build_plan(src, dst)
    assert plan.meta.model_ids == ["tiny/unet-a", "tiny/unet-b"]
    m = plan.meta
    assert (m.vae_id, m.scaling_factor, m.space, m.width, m.height) == (VAE, 0.18215, "latent", 64, 64)
    assert (m.source_model_id, m.destination_model_id) == ("tiny/unet-a", "tiny/unet-b")


def test_different_vaes_are_refused_naming_both() -> None:
    src = make_trail(4, seed=13, model_id="tiny/unet-a", vae_id="tiny/vae-a")
    dst = make_trail(4, seed=14, model_id="other/unet-b", vae_id="other/vae-b")
    with pytest.raises(TransitionError) as info:
        build_plan(src, dst)
    message = str(info.value)
    for name in ("tiny/vae-a", "other/vae-b", "tiny/unet-a", "other/unet-b"):
        assert name in message
    assert isinstance(info.value, TrailError)


def test_same_vae_id_with_different_scaling_is_refused() -> None:
    src = make_trail(4, seed=15, scaling_factor=0.18215)
    dst = make_trail(4, seed=16, scaling_factor=0.13025)
    with pytest.raises(TransitionError, match=r"different VAEs.*0\.18215.*0\.13025"):
        check_compatible(src, dst)


def test_same_vae_id_with_different_per_channel_statistics_is_refused() -> None:
    """Playground-v2.5-style VAEs scale each latent channel by its own mean and std: two
    trails that agree on the scalar factor but not on those do not decode alike."""
    stats = {
        "latents_mean": [-1.6574, 1.886, -1.383, 2.5155],
        "latents_std": [8.4927, 5.9022, 6.5498, 5.2299],
    }
    src = make_trail(4, seed=15, scaling_factor=0.5)
    dst = make_trail(4, seed=16, scaling_factor=0.5)
    dst.meta.latents_mean, dst.meta.latents_std = stats["latents_mean"], stats["latents_std"]
    expected = r"latent scaling 0\.5/shift 0 vs 0\.5/shift 0/per-channel mean \[-1\.6574"
    with pytest.raises(TransitionError, match=expected):
        check_compatible(src, dst)
    src.meta.latents_mean, src.meta.latents_std = list(stats["latents_mean"]), list(stats["latents_std"])
    plan = build_plan(src, dst)
    assert (plan.meta.latents_mean, plan.meta.latents_std) == (stats["latents_mean"], stats["latents_std"])


def test_missing_vae_id_or_mixed_spaces_are_refused() -> None:
    with pytest.raises(TransitionError, match="records no VAE id"):
        check_compatible(make_trail(3, seed=17, vae_id=""), make_trail(3, seed=18))
    pixel = make_trail(3, seed=19, space="pixel", channels=3, vae_id="")
    with pytest.raises(TransitionError, match="latent space .* pixel space"):
        check_compatible(make_trail(3, seed=20), pixel)
    # Pixel space needs no VAE: two pixel trails combine.
    build_plan(pixel, make_trail(3, seed=21, space="pixel", channels=3, vae_id=""))


def test_different_channel_counts_are_refused() -> None:
    with pytest.raises(TransitionError, match=r"latent channels differ \(4 vs 3\)"):
        check_compatible(make_trail(3, seed=22), make_trail(3, seed=23, channels=3))


def test_different_sizes_need_resize_which_centre_crops_another_shape() -> None:
    src = make_trail(5, seed=24, size=(64, 64))
    dst = make_trail(4, seed=25, size=(64, 96))
    with pytest.raises(TransitionError, match=r"sizes differ \(64×64 vs 96×64 latents\).*--resize"):
        build_plan(src, dst)

    plan = build_plan(src, dst, resize=True)
    assert plan.plan.shape == (len(src) - 1 + len(dst), 4, 64, 64)
    # As tall as the source already: nothing is scaled, the middle 64 of its 96 columns are shown.
    middle = dst.latents[..., 16:80]
    assert torch.equal(plan.plan[-1], middle[-1])
    assert torch.equal(plan.plan[plan.meta.forward_start :], middle)
    m = plan.meta
    assert m.resized and m.fits == ["", "cropped"] and m.fitted == "cropped"
    assert m.original_sizes == [(512, 512), (768, 512)] and m.fitted_from == (768, 512)
    assert (m.width, m.height) == (512, 512)


def test_same_shape_and_same_size_are_not_cropped() -> None:
    src = make_trail(3, seed=47, size=(16, 24))
    same = build_plan(src, make_trail(3, seed=48, size=(16, 24)), resize=True).meta
    assert (same.resized, same.fits, same.fitted, same.fitted_from) == (False, ["", ""], "", None)
    bigger = make_trail(3, seed=49, size=(32, 48))
    plan = build_plan(src, bigger, resize=True)
    assert (plan.meta.fits, plan.meta.fitted_from) == (["", "resized"], (384, 256))
    assert torch.equal(plan.plan[-1], resize_trail(bigger, (16, 24)).final)


def disk_trail(size: tuple[int, int], radius: float, *, space: str = "latent") -> Trail:
    """A trail whose every entry is a centred disk of ``radius`` cells (1 inside, 0 outside)."""
    h, w = size
    rows = torch.arange(h, dtype=torch.float32).add(0.5 - h / 2).view(-1, 1)
    cols = torch.arange(w, dtype=torch.float32).add(0.5 - w / 2).view(1, -1)
    disk = (rows.square() + cols.square() <= radius**2).float()
    channels, cell = (4, 8) if space == "latent" else (3, 1)
    meta = TrailMeta(vae_id=VAE if space == "latent" else "", space=space, width=w * cell, height=h * cell)
    latents = disk.expand(2, channels, h, w).clone()
    return Trail(latents=latents, timesteps=torch.tensor([10.0, 0.0]), meta=meta)


def blob_box(latent: torch.Tensor) -> tuple[int, int, float, float]:
    """Height, width and centre (row, column) of the cells over 0.5 in a [C, H, W] latent."""
    rows = (latent[0] > 0.5).any(dim=1).nonzero().flatten()
    cols = (latent[0] > 0.5).any(dim=0).nonzero().flatten()
    height, width = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
    return height, width, float(rows[0] + rows[-1] + 1) / 2, float(cols[0] + cols[-1] + 1) / 2


@pytest.mark.parametrize(
    ("source", "destination", "radius", "space", "fit", "diameter"),
    [
        # A tall destination shown square: scaled ×2 to cover it, top and bottom cut.
        ((32, 32), (32, 16), 6, "latent", "cropped", 24),
        # A square destination shown tall: as tall already, only its sides are cut.
        ((32, 16), (32, 32), 6, "pixel", "cropped", 12),
        # 768x512 shown at 512x768 (SD latents 64×96 and 96×64, here a quarter): scaled ×1.5.
        ((24, 16), (16, 24), 4, "latent", "cropped", 12),
        # The same shape at another size is only scaled.
        ((32, 32), (16, 16), 5, "latent", "resized", 20),
    ],
)
def test_fitting_keeps_a_round_blob_round_and_centred(
    source: tuple[int, int],
    destination: tuple[int, int],
    radius: float,
    space: str,
    fit: str,
    diameter: int,
) -> None:
    src, dst = disk_trail(source, 3, space=space), disk_trail(destination, radius, space=space)
    height, width, _, _ = blob_box(dst.final)
    assert height == width == 2 * radius  # round to start with

    plan = build_plan(src, dst, resize=True)
    assert plan.meta.fitted == fit
    assert plan.plan.shape[-2:] == source
    height, width, row, col = blob_box(plan.plan[-1])
    assert abs(height - width) <= 1, (height, width)  # round, not an ellipse
    assert abs(height - diameter) <= 1, (height, diameter)
    assert (row, col) == (source[0] / 2, source[1] / 2)  # the middle is what is kept


def test_fit_trail_records_how_and_leaves_the_input_alone() -> None:
    tall = disk_trail((32, 16), 5)
    before = tall.latents.clone()
    fitted = fit_trail(tall, (32, 32))
    assert fitted.latents.shape == (2, 4, 32, 32)
    assert (fitted.meta.width, fitted.meta.height) == (256, 256)
    assert fitted.meta.extra["fitted"] == "cropped"
    assert fitted.meta.extra["fitted_from"] == [128, 256]
    assert torch.equal(tall.latents, before) and tall.meta.extra == {}
    assert fit_trail(tall, (32, 16)) is tall
    assert fit_trail(tall, (16, 8)).meta.extra["fitted"] == "resized"
    # Cropping alone, without scaling, still copies: the input's storage is never shared.
    side = fit_trail(tall, (16, 16))
    side.latents.fill_(7.0)
    assert torch.equal(tall.latents, before)
    with pytest.raises(ValueError, match="at least 1×1"):
        fit_trail(tall, (0, 4))


@pytest.mark.parametrize(
    ("shape", "size", "cover", "kind"),
    [
        ((64, 96), (96, 64), (96, 144), "cropped"),  # 768x512 shown at 512x768
        ((96, 64), (64, 96), (144, 96), "cropped"),
        ((16, 8), (16, 16), (32, 16), "cropped"),
        ((8, 8), (8, 12), (12, 12), "cropped"),
        ((32, 48), (16, 24), (16, 24), "resized"),
        ((16, 24), (16, 24), (16, 24), ""),
        # Rounding to whole cells never leaves the covered side short of the target.
        ((65, 97), (64, 96), (64, 96), "resized"),
        ((7, 10), (64, 96), (67, 96), "cropped"),
    ],
)
def test_cover_size_keeps_the_aspect_and_covers_the_target(
    shape: tuple[int, int], size: tuple[int, int], cover: tuple[int, int], kind: str
) -> None:
    assert cover_size(shape, size) == cover
    assert cover[0] >= size[0] and cover[1] >= size[1]
    assert fit_kind(shape, size) == kind


def test_resize_trail_averages_and_updates_the_size() -> None:
    # Vertical stripes 1,0,0,0: a 4× shrink must average them (antialiasing), not sample the
    # zeros between (plain bilinear gives 0 here); the border columns are clamped, so skip them.
    stripes = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(8).expand(2, 4, 16, 32).clone()
    trail = Trail(
        latents=stripes,
        timesteps=torch.tensor([10.0, 0.0]),
        meta=TrailMeta(vae_id=VAE, width=256, height=128),
    )
    small = resize_trail(trail, (4, 8))
    assert small.latents.shape == (2, 4, 4, 8)
    inner = small.latents[..., 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.25), atol=1e-5)
    assert (small.meta.width, small.meta.height) == (64, 32)
    assert small.meta.extra["resized_from"] == [16, 32]
    assert torch.equal(trail.latents, stripes)  # the input trail is left alone

    pixel = make_trail(2, seed=26, space="pixel", channels=3, vae_id="", size=(16, 16))
    grown = resize_trail(pixel, (24, 32))
    assert (grown.meta.width, grown.meta.height) == (32, 24)
    with pytest.raises(ValueError, match="at least 1×1"):
        resize_trail(pixel, (0, 4))


# --- bad options -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0.0, -0.5, 1.01, 2, math.nan])
def test_depth_outside_range_is_refused(depth: float) -> None:
    with pytest.raises(ValueError, match=r"depth must be in \(0, 1\]"):
        build_plan(make_trail(3, seed=27), make_trail(3, seed=28), depth=depth)


def test_unknown_guidance_and_bad_interp_steps_are_refused() -> None:
    src, dst = make_trail(3, seed=29), make_trail(3, seed=30)
    with pytest.raises(ValueError, match="guidance must be one of schedule, interpolate"):
        build_plan(src, dst, guidance="slerp")
    with pytest.raises(ValueError, match="only to guidance='interpolate'"):
        build_plan(src, dst, interp_steps=5)
    with pytest.raises(ValueError, match="interp_steps must be"):
        build_plan(src, dst, guidance="interpolate", interp_steps=0)


# --- chains ----------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", ["schedule", "interpolate"])
def test_chain_of_three_lands_on_each_final_at_hop_boundaries(guidance: str) -> None:
    a, b, c = make_trail(5, seed=31), make_trail(6, seed=32, model_id="tiny/unet-b"), make_trail(4, seed=33)
    plan = chain_plans([a, b, c], guidance=guidance, depth=0.6)

    assert torch.equal(plan.start, a.final)
    first_end, second_end = plan.meta.hop_ends
    assert torch.equal(plan.plan[first_end], b.final)
    assert torch.equal(plan.plan[second_end], c.final)
    assert second_end == len(plan) - 1
    # Each hop is exactly the single transition between its two trails.
    ab = build_plan(a, b, guidance=guidance, depth=0.6)
    bc = build_plan(b, c, guidance=guidance, depth=0.6)
    assert torch.equal(plan.plan, torch.cat([ab.plan, bc.plan]))
    assert plan.meta.forward_starts == [ab.meta.forward_start, len(ab) + bc.meta.forward_start]
    assert plan.meta.model_ids == ["tiny/unet-a", "tiny/unet-b", "tiny/unet-a"]


def test_chain_fits_every_hop_to_the_first_size() -> None:
    a = make_trail(3, seed=34, size=(8, 8))
    b = make_trail(3, seed=35, size=(8, 12))
    c = make_trail(3, seed=36, size=(16, 16))
    with pytest.raises(TransitionError, match="sizes differ"):
        chain_plans([a, b, c])
    plan = chain_plans([a, b, c], resize=True)
    assert plan.plan.shape[1:] == (4, 8, 8)
    assert torch.equal(plan.plan[plan.meta.hop_ends[0]], b.final[:, :, 2:10])
    assert torch.equal(plan.plan[-1], resize_trail(c, (8, 8)).final)
    assert plan.meta.fits == ["", "cropped", "resized"]
    assert plan.meta.original_sizes == [(64, 64), (96, 64), (128, 128)]
    assert (plan.meta.fitted, plan.meta.fitted_from) == ("resized", (128, 128))


def test_chain_refuses_too_few_trails_and_a_foreign_vae_anywhere() -> None:
    a, b = make_trail(3, seed=37), make_trail(3, seed=38)
    with pytest.raises(TransitionError, match="at least two trails"):
        chain_plans([a])
    odd = make_trail(3, seed=39, vae_id="other/vae", model_id="other/unet")
    with pytest.raises(TransitionError, match="^results 2 → 3: cannot transition: .*other/vae"):
        chain_plans([a, b, odd])


def test_plans_from_saved_trails_match_the_originals(tmp_path) -> None:
    src, dst = make_trail(5, seed=40), make_trail(5, seed=41, model_id="tiny/unet-b")
    loaded = [Trail.load(t.save(tmp_path / f"{i}.safetensors")) for i, t in enumerate((src, dst))]
    assert torch.equal(build_plan(*loaded, depth=0.5).plan, build_plan(src, dst, depth=0.5).plan)


# --- painting a plan ---------------------------------------------------------------------


@pytest.mark.parametrize("effect", EFFECTS)
@pytest.mark.parametrize("guidance", ["schedule", "interpolate"])
def test_every_effect_paints_from_the_source_onto_the_destination(effect: str, guidance: str) -> None:
    src, dst = make_trail(6, seed=42), make_trail(5, seed=43, model_id="tiny/unet-b")
    plan = build_plan(src, dst, guidance=guidance, depth=0.8)
    frames = list(paint(plan.plan, effect, start=plan.start, frames=30))

    assert len(frames) == 30
    # The first frame changed only its masked cells; everything else is still the source.
    first = frames[0]
    assert torch.equal(first.canvas[~first.mask], src.final[~first.mask])
    assert torch.equal(frames[-1].canvas, dst.final)
    assert [f.step for f in frames] == sorted(f.step for f in frames)


@pytest.mark.parametrize("effect", EFFECTS)
def test_every_effect_ends_a_chain_on_the_last_final(effect: str) -> None:
    a, b, c = make_trail(4, seed=44), make_trail(5, seed=45), make_trail(3, seed=46)
    plan = chain_plans([a, b, c], depth=0.5)
    frames = list(paint(plan.plan, effect, start=plan.start))
    assert torch.equal(frames[-1].canvas, c.final)
    assert frames[-1].step == len(plan) - 1
