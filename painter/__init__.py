"""Latent Painter: turn a diffusion model's x0-hat trail into a painting animation."""


def input_errors() -> tuple[type[Exception], ...]:
    """The painter's exceptions for bad input: each message is written for whoever gave it.

    Imported when asked for, so importing :mod:`painter` stays cheap.
    """
    from painter.animate import AnimationError
    from painter.capture import CaptureError
    from painter.images import ImageInputError
    from painter.models import ModelError
    from painter.trail import TrailError

    return (CaptureError, ModelError, AnimationError, ImageInputError, TrailError)
