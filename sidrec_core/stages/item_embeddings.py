"""DVC stage ``item_embeddings``: the trained SASRec's item table (``collaborative.npy``) and
text ⊕ collaborative (``both.npy``) written to the folder ``collab.output``; ``build_sids`` (and
``train_etegrec``) read one when ``sid.embeddings`` points at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.embeddings import EmbedConfig, load_embeddings
from sidrec_core.data.split import leave_one_out
from sidrec_core.etegrec.collab import SOURCES, CollabConfig, item_vectors
from sidrec_core.io import save_npy
from sidrec_core.models.sasrec import SASRecConfig, load_sasrec
from sidrec_core.stages.context import stage_context


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``sasrec.checkpoint`` (+ ``embed.output``), write ``collab.output``."""
    with stage_context(
        "item_embeddings",
        params,
        output_key="collab.output",
        data=DataConfig,
        embed=EmbedConfig,
        sasrec=SASRecConfig,
        collab=CollabConfig,
    ) as ctx:
        data, sasrec, cfg = ctx.cfg["data"], ctx.cfg["sasrec"], ctx.cfg["collab"]
        loo = leave_one_out(load_prepared(data.prepared_dir))
        model = load_sasrec(sasrec, loo, sasrec.checkpoint, "sasrec.checkpoint")
        with torch.no_grad():
            table = model.item_table().cpu().numpy()
        text = load_embeddings(ctx.cfg["embed"].output, loo.num_items)
        dims = {}
        for source in SOURCES:
            x = item_vectors(table, text, source)
            save_npy(Path(cfg.output) / f"{source}.npy", x)
            dims[f"{source}_dim"] = int(x.shape[1])
        ctx.run.record(num_items=loo.num_items, **dims)
        return ctx.result()
