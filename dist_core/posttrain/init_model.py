"""A model built from a ``model.config`` section and saved with ``save_pretrained``, so every rank
loads it the real way (``from_pretrained`` on a local directory)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def build_model(config: dict[str, Any], tokenizer_dir: Path, seed: int) -> Any:
    """A freshly initialised causal LM from ``config`` (vocabulary and special tokens from the
    tokenizer); the same seed gives the same weights in every process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    conf = dict(config)
    model_type = conf.pop("model_type")
    conf.setdefault("vocab_size", len(tok))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        conf.setdefault(name, getattr(tok, name) if getattr(tok, name) is not None else tok.eos_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **conf))


def save_model_dir(model: Any, out: Path) -> Path:
    """``save_pretrained`` into ``out`` through a temporary directory, so ``out`` is whole or absent."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    os.replace(tmp, out)
    return out


def build_model_dir(config: dict[str, Any], tokenizer_dir: Path, out: Path, seed: int) -> Path:
    """Build a model from ``config`` into ``out``; an existing ``out`` is kept, so a resumed run
    starts from the same weights."""
    if (out / "config.json").exists():
        return out
    return save_model_dir(build_model(config, tokenizer_dir, seed), out)
