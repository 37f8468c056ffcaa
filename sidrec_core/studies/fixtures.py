"""Study set-up hooks for inputs no stage makes. ``load_mode`` needs a local pretrained causal LM
(nothing is downloaded): ``--set sidlm.checkpoint=PATH``, or on ``smoke`` a tiny random Qwen2 that
only exercises the machinery."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sidrec_core.studies.profiles import get_dotted


def local_base_checkpoint(params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Overrides pointing ``sidlm.checkpoint`` at a usable local checkpoint."""
    path = get_dotted(params, "sidlm.checkpoint")
    if path and Path(path).exists():
        return {}
    if get_dotted(params, "base.profile") != "smoke":
        raise ValueError(
            "study load_mode needs a local pretrained causal-LM checkpoint: "
            "--set sidlm.checkpoint=PATH (nothing is downloaded)"
        )
    target = Path(out_dir).resolve() / "cache" / "smoke_base_lm"  # read from a trial's worktree
    if not (target / "config.json").exists():
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from sidrec_core.models.sid_vocab import _scratch_base

        tok = _scratch_base("hello world")
        torch.manual_seed(0)
        size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
        heads = dict(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
        lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), **size, **heads))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smoke_base_lm.", dir=target.parent))
        lm.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # complete folder or none
    return {"sidlm.checkpoint": str(target)}
