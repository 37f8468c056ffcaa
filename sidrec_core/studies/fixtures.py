"""Study set-up hooks: inputs a study needs that no pipeline stage produces.

``load_mode`` compares initialising the SID LM from scratch with loading a local pretrained
causal LM (dense / full fine-tune / LoRA). Nothing is downloaded: on ``dev``/``full`` the user
names a local checkpoint (``--set sidlm.checkpoint=PATH``); on ``smoke`` a tiny randomly
initialised Qwen2 with its own tokenizer stands in, so the machinery of every mode runs (its
quality figures mean nothing, and the report says the profile).
"""

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
        lm = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                tie_word_embeddings=False,
            )
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smoke_base_lm.", dir=target.parent))
        lm.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # complete folder or none
    return {"sidlm.checkpoint": str(target)}
