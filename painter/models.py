"""Load Stable Diffusion-family pipelines, or build the tiny offline one.

Production loads a hub id or a local directory through diffusers' own
``from_pretrained``. ``tiny`` is a Stable Diffusion-architecture pipeline with
small random weights and a tokenizer made from a local byte-level vocabulary; it
is built once, written with ``save_pretrained`` and then loaded back through the
same ``from_pretrained`` path as a real checkpoint, so tests exercise the real
loading code without any download. ``build_tiny_sdxl_pipeline`` does the same for
the SDXL architecture (two text encoders, size-conditioned UNet, SDXL's VAE settings).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_ID = "tiny"
ANALYTIC_ID = "analytic"

SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler",
}


# What a Hugging Face hub id looks like (owner/name), as opposed to a bare word.
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ModelError(ValueError):
    """A model that cannot be found, read or used; the message is meant for the user."""


def _offline_and_not_cached(model_id: str, filename: str) -> bool:
    """Whether ``model_id`` is a hub id that HF_HUB_OFFLINE keeps from being downloaded.

    diffusers then says only that it "does not appear to have a file named" ``filename``,
    which reads as a broken model rather than one never downloaded.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE or not HUB_ID.fullmatch(model_id) or Path(model_id).is_dir():
        return False
    try:
        return not isinstance(try_to_load_from_cache(model_id, filename), str)
    except ValueError:  # not a valid repository id after all: the loader's own message says more
        return False


def _not_cached(what: str, model_id: str, local: str) -> ModelError:
    return ModelError(
        f"{what} {model_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
        f"download it once online (run once without HF_HUB_OFFLINE, or `hf download {model_id}`) "
        f"or give {local}"
    )


@dataclass
class LoadedModel:
    """A loaded pipeline with what the painter needs to record and decode."""

    pipeline: Any
    model_id: str
    vae_id: str
    device: torch.device
    dtype: torch.dtype

    @property
    def vae(self) -> Any:
        return self.pipeline.vae

    @property
    def upcasts_vae(self) -> bool:
        """Whether the pipeline decodes (and encodes) its VAE in fp32 when it runs in fp16.

        diffusers' rule: SDXL-family pipelines (those with ``upcast_vae``) do when the VAE's
        ``force_upcast`` is set (SDXL's VAE overflows in fp16); SD 1.x/2.x pipelines never
        do, whatever the config says — and ``save_pretrained`` writes ``force_upcast: true``
        into every VAE it saves, so the config alone would decode SD 1.5 in fp32: twice
        the memory, and slower.
        """
        # SDXL family: the method (deprecated in diffusers, to go in 1.0) or SDXL's second
        # text encoder, so a diffusers without the method still upcasts SDXL's VAE.
        components = getattr(self.pipeline, "components", {}) or {}
        sdxl_family = hasattr(self.pipeline, "upcast_vae") or "text_encoder_2" in components
        return sdxl_family and bool(getattr(self.vae.config, "force_upcast", False))


def model_label(model_id: str | None) -> str | None:
    """How a model is named where members see it: a local checkpoint by its folder's name.

    A local pipeline is recorded by its absolute path (so it loads again from anywhere),
    and that path names the server's file system (often its user); members are shown only
    its last part. Hub ids (``org/name``) and the built-in ids are shown as they are.
    """
    if not model_id or not model_id.startswith("/"):
        return model_id
    return Path(model_id).name or model_id


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is None:
        # Modules report cuda:0, and torch.device("cuda") != torch.device("cuda:0"): every
        # device comparison would fail and move the VAE again before each decode.
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (what SD checkpoints are published in) and fp32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[dtype]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-printable-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _tiny_tokenizer_files(directory: Path) -> None:
    """A CLIP byte-level BPE vocabulary with no merges: every byte is a token."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(symbol, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _tiny_vae(**config: Any) -> Any:
    """A tiny random-weight AutoencoderKL; ``config`` adds to its settings."""
    from diffusers import AutoencoderKL

    # Four blocks give SD's 8x spatial factor, so a tiny trail has SD's latent geometry.
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        **config,
    )


def build_tiny_pipeline(
    path: str | Path,
    *,
    seed: int = 0,
    prediction_type: str = "epsilon",
    scheduler: str = "pndm",
    vae_seed: int | None = None,
    safety: str | None = None,
) -> Path:
    """Create the tiny SD-architecture pipeline with random weights and save it to ``path``.

    ``seed`` sets the UNet and text encoder weights, ``vae_seed`` (default: ``seed``)
    the VAE's, so two checkpoints sharing one VAE can be made for transition tests.
    ``safety`` adds a tiny safety checker that flags every picture (``"flag-all"``) or
    none (``"flag-none"``), so the checking path runs for real in tests.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(_tiny_clip_text_config())
    torch.manual_seed(seed if vae_seed is None else vae_seed)
    vae = _tiny_vae()
    return save_sd_pipeline(
        path,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        scheduler=scheduler,
        prediction_type=prediction_type,
        safety=safety,
    )


def save_sd_pipeline(
    path: str | Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    scheduler: str = "pndm",
    prediction_type: str = "epsilon",
    safety: str | None = None,
) -> Path:
    """Assemble a StableDiffusionPipeline around these models and save it to ``path``.

    The tokenizer is the byte-level one (the prompt's token count, not its vocabulary,
    sets the text encoder's cost), the scheduler SD's scaled-linear one. Used for the
    tiny model and for the benchmarks' full-size random-weight SD 1.5.
    """
    import diffusers
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    path = Path(path)
    with tempfile.TemporaryDirectory() as tok_dir:
        _tiny_tokenizer_files(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    scheduler_cls = getattr(diffusers, SCHEDULER_CLASSES[scheduler])
    sched = scheduler_cls(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        steps_offset=1,
        **({"skip_prk_steps": True} if scheduler == "pndm" else {}),
    )
    checker, extractor = _tiny_safety_checker(safety) if safety else (None, None)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=sched,
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=checker is not None,
    )
    return _save_atomically(pipe, path)


def _save_atomically(pipe: Any, path: Path) -> Path:
    """``save_pretrained`` beside ``path`` and rename, so a crash never leaves a half-written model.

    A model already at ``path`` (another process built it first) is kept as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        pipe.save_pretrained(staging)
        if path.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _tiny_clip_text_config(**extra: Any) -> Any:
    """The tiny CLIP text encoder's config, sized for the byte-level tokenizer."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=514,
        max_position_embeddings=77,
        **extra,
    )


def build_tiny_sdxl_pipeline(
    path: str | Path,
    *,
    seed: int = 0,
    vae_seed: int | None = None,
    prediction_type: str = "epsilon",
) -> Path:
    """Create a tiny SDXL-architecture pipeline with random weights and save it to ``path``.

    A real ``StableDiffusionXLPipeline``: two text encoders (``CLIPTextModel`` and
    ``CLIPTextModelWithProjection``) whose penultimate hidden states are concatenated
    for cross-attention, a UNet conditioned on the pooled text embedding and the six
    size/crop numbers (``addition_embed_type="text_time"``), SDXL's VAE settings
    (``scaling_factor`` 0.13025, ``force_upcast``) and its Euler scheduler. ``seed``
    sets the UNet and text encoder weights, ``vae_seed`` (default: ``seed``) the VAE's.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    hidden, projection, time_dim = 32, 32, 8
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(projection_dim=projection))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        # Cross-attention reads both encoders' hidden states side by side.
        cross_attention_dim=2 * hidden,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # The added embedding: text_encoder_2's pooled projection, then original size,
        # crop corner and target size (six numbers), each embedded in time_dim.
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=16,
    )
    torch.manual_seed(seed if vae_seed is None else vae_seed)
    # SDXL's VAE: its own latent scale, and it overflows in fp16 (decoded in fp32).
    vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
    with tempfile.TemporaryDirectory() as tok_dir:
        _tiny_tokenizer_files(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
        # SDXL's second tokenizer pads with "!" rather than the end token.
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token="!")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return _save_atomically(pipe, path)


def _tiny_safety_checker(mode: str) -> tuple[Any, Any]:
    """SD's safety checker at toy size; its concept thresholds decide the verdict outright."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    if mode not in ("flag-all", "flag-none"):
        raise ValueError(f"safety mode {mode!r} must be flag-all or flag-none")
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 514,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    # A cosine distance lies in [-1, 1]: a threshold of -2 is always exceeded, +2 never.
    threshold = -2.0 if mode == "flag-all" else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def tiny_model_dir(data_dir: str | Path) -> Path:
    """Where the built-in tiny model lives, built on first use."""
    path = Path(data_dir).expanduser() / "models" / TINY_ID
    if not (path / "model_index.json").is_file():
        build_tiny_pipeline(path)
    return path


def vae_fingerprint(vae: Any) -> str:
    """A stable id of a VAE's weights: trails decode only with the VAE they came from.

    Hashing the config and the decoder's first and last layers tells apart any two
    VAEs that differ in practice, at a cost of microseconds even for SD's VAE.
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = vae.state_dict()
    for key in sorted(state):
        if key.startswith(("decoder.conv_in", "decoder.conv_out", "post_quant_conv")):
            digest.update(key.encode())
            digest.update(state[key].detach().to("cpu", torch.float32).numpy().tobytes())
    return f"vae-{digest.hexdigest()[:16]}"


def set_scheduler(pipeline: Any, name: str) -> None:
    """Swap the pipeline's scheduler for ``name`` (``default`` keeps the checkpoint's own)."""
    if name == "default":
        return
    if name not in SCHEDULER_CLASSES:
        raise ModelError(f"unknown scheduler {name!r}; use default, {', '.join(SCHEDULER_CLASSES)}")
    import diffusers

    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    extra: dict[str, Any] = {}
    if name == "dpmpp":
        extra["algorithm_type"] = "dpmsolver++"
    if name == "ddim":
        # Clipping x0 to [-1, 1] suits pixel models; for latents it is wrong (SD ships it off).
        extra["clip_sample"] = bool(pipeline.scheduler.config.get("clip_sample", False))
    pipeline.scheduler = cls.from_config(pipeline.scheduler.config, **extra)


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` in 0.42; older releases know only the first."""
    import diffusers

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"


def load_pipeline(
    model_id: str,
    *,
    data_dir: str | Path = "./data",
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "default",
) -> LoadedModel:
    """Load any SD-family text-to-image pipeline by hub id or local path, or ``tiny``."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source: str | Path = model_id
    if model_id == TINY_ID:
        source = tiny_model_dir(data_dir)
    elif model_id == ANALYTIC_ID:
        raise ModelError("the analytic model has no pipeline; it paints a picture given with --image")
    else:
        local = Path(model_id).expanduser()
        looks_local = model_id.startswith((".", "/", "~")) or local.exists()
        if looks_local:
            if not (local / "model_index.json").is_file():
                raise ModelError(
                    f"model path {model_id!r} is not a readable diffusers pipeline directory "
                    "(no model_index.json)"
                )
            source = local
            # Recorded absolute (trails, results): a relative path would only load again from
            # the directory it was typed in, and transitions and repaints run from anywhere.
            model_id = str(local.resolve())
    dtype_kw = {_dtype_keyword(): torch_dtype}
    try:
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(source, **dtype_kw)
        except ValueError:
            pipe = DiffusionPipeline.from_pretrained(source, **dtype_kw)
    except OSError as exc:
        if _offline_and_not_cached(model_id, "model_index.json"):
            raise _not_cached("model", model_id, "a local pipeline directory") from None
        raise ModelError(f"cannot load model {model_id!r}: {str(exc).splitlines()[0]}") from None
    if not hasattr(pipe, "vae") or not hasattr(pipe, "scheduler"):
        raise ModelError(f"model {model_id!r} is not a Stable Diffusion-family latent pipeline")
    set_scheduler(pipe, scheduler)
    pipe = pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(
        pipeline=pipe,
        model_id=model_id,
        vae_id=vae_fingerprint(pipe.vae),
        device=torch_device,
        dtype=torch_dtype,
    )


def load_taesd(taesd_id: str, *, device: torch.device, dtype: torch.dtype) -> Any:
    """Load the tiny autoencoder (diffusers ``AutoencoderTiny``) from a hub id or local path."""
    from diffusers import AutoencoderTiny

    if not taesd_id:
        raise ModelError("[model] decoder = taesd needs [model] taesd_id (a hub id or local directory)")
    try:
        taesd = AutoencoderTiny.from_pretrained(taesd_id, **{_dtype_keyword(): dtype})
    except (OSError, ValueError) as exc:
        if _offline_and_not_cached(taesd_id, "config.json"):
            raise _not_cached("TAESD", taesd_id, "a local AutoencoderTiny directory") from None
        raise ModelError(f"cannot load TAESD {taesd_id!r}: {str(exc).splitlines()[0]}") from None
    return taesd.to(device)
