"""Seeds, devices and display: the one call a notebook or script makes before it starts.

``setup(seed)`` seeds Python, NumPy and torch so that the same seed on the same machine gives the same
numbers, quiets transformers' per-load progress bars, and (in a notebook) picks a plotly renderer that
keeps executed copies small when running headless.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no GPU is visible; fix: use device='auto' or 'cpu'")
    return device


def quiet_transformers() -> None:
    """Silence per-load progress bars and advisory warnings that flood notebooks and logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup(seed: int = 0, renderer: str | None = None) -> dict:
    """Seed everything, quiet transformers and configure plotly; returns the versions for a notebook's header."""
    import plotly.io as pio

    seed_everything(seed)
    quiet_transformers()
    pio.renderers.default = renderer or os.environ.get("PLOTLY_RENDERER") or pio.renderers.default
    from . import __version__

    import transformers
    return {"fusionkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "device": str(pick_device()), "threads": torch.get_num_threads(), "seed": seed}
