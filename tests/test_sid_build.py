"""The build_sids stage on the synthetic corpus: artifacts, metrics keys, reload, CLIP data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidrec_core.data.synthetic import synthetic_embeddings
from sidrec_core.io import save_npy
from sidrec_core.sid.registry import load_tokenizer
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages import build_sids as stage
from sidrec_core.stages.build_sids import run
from sidrec_core.studies.study import SID_QUALITY


@pytest.fixture()
def sid_params(syn_prepared, syn_ds, tmp_path):
    emb = tmp_path / "embeddings.npy"
    save_npy(emb, synthetic_embeddings(syn_ds))
    return {
        **syn_prepared,
        "sid": {
            "num_levels": 2,
            "codebook_size": 8,
            "embeddings": str(emb),
            "output_dir": str(tmp_path / "sids"),
        },
    }


@pytest.mark.parametrize("collision", ["suffix", "knn", "random"])
def test_stage_writes_unique_table_checkpoint_and_metrics(sid_params, syn_ds, collision):
    sid_params["sid"]["collision"] = collision
    result = run(sid_params)
    out = sid_params["sid"]["output_dir"]
    table = SIDTable.load(out, num_items=syn_ds.num_items)
    assert table.is_unique() and result["collision_rate_after"] == 0.0
    assert (table.codes[0] == -1).all()
    assert table.num_levels == (3 if collision == "suffix" else 2)
    sids = json.loads((Path(out) / "sids.json").read_text())
    assert sids["1"] == table.tokens(1)
    assert (Path(out) / "tokenizer.pt").exists()
    metrics = json.loads((Path(sid_params["base"]["metrics_dir"]) / "build_sids.json").read_text())
    for key in SID_QUALITY:
        assert key in metrics, key
    assert len(metrics["utilization"]) == 2 and len(metrics["perplexity"]) == 2
    # the checkpoint re-encodes the embeddings exactly as the fitted tokenizer did
    x = np.load(sid_params["sid"]["embeddings"])
    tok = load_tokenizer(out)
    raw = tok.encode(x)
    moved = (raw != table.codes[1:, :2]).any(axis=1)
    assert moved.mean() <= metrics["collision_rate_before"]


def test_same_seed_same_table(sid_params, tmp_path):
    run(sid_params)
    first = np.load(tmp_path / "sids" / "codes.npy")
    sid_params["sid"]["output_dir"] = str(tmp_path / "again")
    run(sid_params)
    assert np.array_equal(first, np.load(tmp_path / "again" / "codes.npy"))


def test_clip_pairs_come_from_training_sequences_only(sid_params, syn_ds, monkeypatch):
    seen = {}
    real = stage.build_sids

    def spy(x, cfg, **kw):
        seen["train_sequences"] = kw["train_sequences"]
        return real(x, cfg, **kw)

    monkeypatch.setattr(stage, "build_sids", spy)
    sid_params["sid"].update(
        method="rqvae",
        rqvae={"clip": True, "epochs": 2, "batch_size": 32, "hidden_dims": [16], "latent_dim": 4},
    )
    run(sid_params)
    train = seen["train_sequences"]
    assert len(train) == len(syn_ds.sequences)
    for seq, full in zip(train, syn_ds.sequences, strict=True):
        assert np.array_equal(seq, full[:-2])  # valid/test targets never enter the pairs


def test_stage_rejects_bad_embeddings(sid_params):
    x = np.load(sid_params["sid"]["embeddings"])
    x[3, 0] = np.nan
    save_npy(sid_params["sid"]["embeddings"], x)
    with pytest.raises(ValueError, match="NaN/inf"):
        run(sid_params)
