"""The eSASRec benchmark's SASRec ingredients: LiGR blocks, per-position / unfiltered sampled-
softmax negatives, item-table dropout, Xavier init, and curves that follow a redirected run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sidrec_core.config import ConfigError, build
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.negatives import NegativeSampler
from sidrec_core.models.losses import sampled_softmax_loss
from sidrec_core.models.sasrec import SASRec, SASRecConfig
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.models.sasrec_blocks import Block, SwiGLU
from sidrec_core.stages.train_sasrec import run as run_train_sasrec
from sidrec_core.train import TrainConfig

SMALL = {"hidden_dim": 16, "num_blocks": 1, "num_heads": 1, "ffn_dim": 32, "dropout": 0.0}
SS = {"loss": "sampled_softmax", "num_negatives": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(loo, **kw) -> SASRec:
    torch.manual_seed(0)
    cfg = SASRecConfig(**{**SMALL, "train": TrainConfig(batch_size=32), **kw})
    return SASRec(cfg, loo.num_items)


def test_swiglu_computes_the_gated_product():
    torch.manual_seed(0)
    ffn = SwiGLU(4, 6, dropout=0.0)
    x = torch.randn(3, 4)
    a, b, out = ffn.w_a.weight, ffn.w_b.weight, ffn.w_out.weight
    expected = (F.silu(x @ a.T) * (x @ b.T)) @ out.T
    assert torch.allclose(ffn(x), expected, atol=1e-6)
    assert ffn.w_a.bias is None and ffn.w_out.bias is None


def test_ligr_gates_scale_the_residual_branches():
    torch.manual_seed(0)
    block = Block(8, 2, 16, 0.0, "ligr").eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        for gate in (block.gate1, block.gate2):
            gate.weight.zero_()
            gate.bias.fill_(-1e4)  # sigmoid -> 0: both branches shut
        assert torch.allclose(block(x, mask), x)
        for gate in (block.gate1, block.gate2):
            gate.bias.fill_(1e4)  # sigmoid -> 1: the plain pre-LN residuals
        attn = x + block.attend(block.norm1(x), mask)
        expected = attn + block.ffn(block.norm2(attn))
        assert torch.allclose(block(x, mask), expected, atol=1e-5)


def test_ligr_stack_has_no_embedding_or_final_norm_and_trains(syn_loo):
    model = _model(syn_loo, block="ligr", **SS, ss_sharing="per_position", ss_exclude="none")
    assert isinstance(model.emb_norm, torch.nn.Identity)
    assert isinstance(model.final_norm, torch.nn.Identity)
    batch = next(make_batches(model.cfg, syn_loo, seed=0)(1))
    first = float(model.loss(batch))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch)) < 0.8 * first


def test_per_position_negatives_differ_by_position_and_unfiltered_ones_hit_positives():
    seqs = [np.array([1, 2, 3, 4]), np.array([2, 3, 4, 5])]
    counts = np.array([0, 1, 2, 2, 2, 1])
    sampler = NegativeSampler("uniform", counts, seqs, num_negatives=4, seed=0)
    unfiltered = TrainBatches(
        seqs, 4, 8, sampler=sampler, negatives_mode="per_position_unfiltered", num_negatives=4
    )
    batches = [next(unfiltered(epoch)) for epoch in range(1, 21)]
    assert batches[0]["negatives"].shape == (2, 3, 4)
    # not one set per batch: positions of a row get different draws
    assert not all(torch.equal(b["negatives"][:, 0], b["negatives"][:, 1]) for b in batches)
    # 5 items, each user owns 4 of them: plain uniform draws hit the row's own items
    owned = [
        sampler.is_positive(b["user"].numpy()[:, None, None], b["negatives"].numpy()).any()
        for b in batches
    ]
    assert any(owned)
    filtered = TrainBatches(
        seqs, 4, 8, sampler=sampler, negatives_mode="per_position", num_negatives=4
    )
    for epoch in range(1, 21):
        batch = next(filtered(epoch))
        users = batch["user"].numpy()[:, None, None]
        assert not sampler.is_positive(users, batch["negatives"].numpy()).any()


def test_training_batches_pick_the_mode_from_sharing_and_exclusion(syn_loo):
    modes = {
        ("shared", "user"): "shared",
        ("shared", "target"): "shared_unfiltered",
        ("shared", "none"): "shared_unfiltered",
        ("per_position", "user"): "per_position",
        ("per_position", "target"): "per_position_unfiltered",
        ("per_position", "none"): "per_position_unfiltered",
    }
    for (sharing, exclude), mode in modes.items():
        cfg = SASRecConfig(**SMALL, **SS, ss_sharing=sharing, ss_exclude=exclude)
        assert make_batches(cfg, syn_loo, seed=0).negatives_mode == mode


def _one_row_batch(negatives: torch.Tensor, **kw) -> tuple[SASRec, dict[str, torch.Tensor]]:
    cfg = SASRecConfig(**SMALL, **SS, max_history=4, **kw)
    torch.manual_seed(0)
    model = SASRec(cfg, num_items=6).eval()
    batch = {
        "history": torch.tensor([[0, 1, 2, 3]]),
        "targets": torch.tensor([[0, 2, 3, 4]]),
        "user": torch.tensor([0]),
        "negatives": negatives,
        "negative_valid": torch.ones(1, negatives.shape[-1], dtype=torch.bool),
    }
    return model, batch


@pytest.mark.parametrize("sharing", ["shared", "per_position"])
def test_target_exclusion_drops_copies_of_the_target(sharing):
    # every negative is the position's own target: equal logits throughout
    targets = torch.tensor([2, 3, 4])
    per_position = targets[None, :, None].expand(1, 3, 5).clone()
    per_position = torch.cat([torch.zeros(1, 1, 5, dtype=torch.long), per_position], dim=1)
    if sharing == "shared":
        negatives = torch.tensor([2, 2, 3, 3, 4])  # shared: some copies of each target
    else:
        negatives = per_position
    kept, batch = _one_row_batch(negatives, ss_sharing=sharing, ss_exclude="none")
    dropped, _ = _one_row_batch(negatives, ss_sharing=sharing, ss_exclude="target")
    with torch.no_grad():
        loss_kept, loss_dropped = float(kept.loss(batch)), float(dropped.loss(batch))
    if sharing == "per_position":
        assert loss_kept == pytest.approx(math.log(6), rel=1e-5)  # positive among 6 equal logits
        assert loss_dropped == pytest.approx(0.0, abs=1e-6)  # nothing left to compete
    else:
        assert loss_dropped < loss_kept


def test_per_position_full_scoring_matches_gathered_negatives(syn_loo):
    # with P x K >= N + 1 the loss scores the whole catalogue and picks columns; same value
    model = _model(syn_loo, **SS, ss_sharing="per_position", ss_exclude="target")
    model.eval()
    batch = next(make_batches(model.cfg, syn_loo, seed=0)(1))
    valid = batch["targets"] > 0
    assert batch["negatives"][valid].numel() >= syn_loo.num_items + 1
    table = model.item_table()
    h, t = model.encode(batch["history"], table)[valid], batch["targets"][valid]
    neg = batch["negatives"][valid]
    expected = sampled_softmax_loss(model.similarity, h, table[t], table[neg], neg != t[:, None])
    assert float(model.loss(batch)) == pytest.approx(float(expected), rel=1e-5)


def test_item_dropout_acts_on_the_table_while_training_only(syn_loo):
    model = _model(syn_loo, item_dropout=0.5)
    raw = model.item_emb.weight
    model.train()
    dropped = model.item_table()
    assert (dropped == 0).float().mean() > 0.3  # about half the entries
    model.eval()
    assert torch.equal(model.item_table(), raw)
    assert torch.equal(_model(syn_loo).train().item_table(), _model(syn_loo).item_emb.weight)


def test_xavier_init_sets_matrix_scales_and_keeps_padding_zero(syn_loo):
    dim = SMALL["hidden_dim"]
    xavier, normal = _model(syn_loo, init="xavier"), _model(syn_loo)
    qkv = xavier.blocks[0].qkv.weight  # [3D, D]: std sqrt(2 / (D + 3D))
    assert float(qkv.std()) == pytest.approx(math.sqrt(2 / (4 * dim)), rel=0.15)
    assert float(normal.blocks[0].qkv.weight.std()) == pytest.approx(0.02, rel=0.15)
    assert torch.equal(xavier.item_emb.weight[0], torch.zeros(dim))
    assert torch.equal(xavier.blocks[0].qkv.bias, torch.zeros(3 * dim))


def test_new_options_fail_with_their_names_and_defaults_stay():
    cfg = SASRecConfig()
    assert (cfg.block, cfg.ss_sharing, cfg.ss_exclude, cfg.item_dropout, cfg.init) == (
        "pre_ln",
        "shared",
        "user",
        0.0,
        "normal",
    )
    for key, value, words in [
        ("ss_sharing", "batch", "per_position"),
        ("ss_exclude", "all", "target"),
        ("init", "kaiming", "xavier"),
        ("block", "hstu", "ligr"),
        ("item_dropout", 1.0, "item_dropout"),
    ]:
        with pytest.raises((ValueError, ConfigError), match=words):
            build(SASRecConfig, {key: value}, "sasrec")
    label = SASRecConfig(**SS, ss_sharing="per_position", ss_exclude="none").negatives_label
    assert label == "uniform per_position exclude=none"
    assert SASRecConfig(**SS).negatives_label == "uniform"


def test_curves_follow_a_redirected_checkpoint(syn_prepared, tmp_path, monkeypatch):
    # base.metrics_dir left at its default: the run's metrics, curves included, go beside the
    # moved checkpoint, never into the tracked metrics/ folder
    monkeypatch.chdir(tmp_path)
    params = {
        **syn_prepared,
        "base": {k: v for k, v in syn_prepared["base"].items() if k != "metrics_dir"},
        "sasrec": {
            **SMALL,
            "checkpoint": str(tmp_path / "run" / "model.pt"),
            "train": {"epochs": 1, "batch_size": 64},
        },
    }
    run_train_sasrec(params)
    assert (tmp_path / "run" / "metrics" / "train_sasrec_curves.json").exists()
    curves = json.loads((tmp_path / "run" / "metrics" / "train_sasrec_curves.json").read_text())
    assert [row["epoch"] for row in curves] == [1]
    assert not (tmp_path / "metrics").exists()
