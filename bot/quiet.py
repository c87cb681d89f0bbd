"""Keep diffusers' and transformers' loading bars and notices out of the user's terminal.

They are loud about things a user cannot act on. Quieting them used to import both
libraries up front (~3 s), which commands that never load a model (``latent-painter
demo`` paints a picture with the closed-form model) paid for nothing. Now ``quiet_libraries``
sets what the libraries read at import time (verbosity environment variables, logger
levels) and ``quiet_loaded`` finishes the job — diffusers' loading bar can only be switched
off through its API — just before a model is loaded, by then imported anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_requested = False


def quiet_libraries() -> None:
    """Ask for quiet libraries: now for what is cheap, at the first model load for the rest."""
    global _requested
    _requested = True
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("diffusers", "transformers", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Alembic logs each plugin it sets up and each migration context at INFO, on every
    # command that opens the database; commands print their own summary.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The bot never joins a voice channel: discord.py's "PyNaCl/davey is not installed,
    # voice will NOT be supported" says nothing an operator can act on.
    _drop_voice_notices(logging.getLogger("discord.client"))
    warnings.filterwarnings("ignore", category=FutureWarning)
    # diffusers passes huggingface_hub a deprecated argument when it looks a model up; the
    # warning is about diffusers' code, printed before our own one-line error.
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
    if "diffusers" in sys.modules or "transformers" in sys.modules:
        quiet_loaded()


def _is_not_a_voice_notice(record: logging.LogRecord) -> bool:
    return "voice will NOT be supported" not in record.getMessage()


def _drop_voice_notices(logger: logging.Logger) -> None:
    if _is_not_a_voice_notice not in logger.filters:
        logger.addFilter(_is_not_a_voice_notice)


def quiet_loaded() -> None:
    """Switch off the libraries' own bars and chatter, if ``quiet_libraries`` was asked for."""
    if not _requested:
        return
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
