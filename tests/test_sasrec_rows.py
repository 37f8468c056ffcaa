"""SASRec training-row layouts (sequence / prefix), position slots (recency / order), blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.dataset import DataConfig, load_dataset
from sidrec_core.data.split import leave_one_out
from sidrec_core.models.sasrec import Block, SASRec, SASRecConfig
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import summarize_trials
from sidrec_core.studies.storage import read_storage
from sidrec_core.studies.study import is_stale
from sidrec_core.train import TrainConfig

SEQS = [np.array([3]), np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9])]
SMALL = {"hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "ffn_dim": 16, "dropout": 0.0}


def _rows(batches: TrainBatches) -> list[tuple[int, list[int], list[int]]]:
    """(user, history without padding, targets) of every row, in a fixed order."""
    batch = next(batches(1))
    rows = [
        (int(u), [int(i) for i in h if i], [int(t) for t in tg if t])
        for u, h, tg in zip(batch["user"], batch["history"], batch["targets"], strict=True)
    ]
    return sorted(rows)


def test_prefix_rows_hold_one_target_each_in_the_last_column():
    batches = TrainBatches(SEQS, 4, batch_size=64, rows="prefix")
    batch = next(batches(1))
    assert (batch["targets"][:, :-1] == 0).all() and (batch["targets"][:, -1] > 0).all()
    assert _rows(batches) == [
        (1, [1], [2]),
        (1, [1, 2], [3]),
        (2, [4], [5]),
        (2, [4, 5], [6]),
        (2, [4, 5, 6], [7]),
        (2, [4, 5, 6, 7], [8]),
        (2, [5, 6, 7, 8], [9]),  # the window keeps the 4 most recent items
    ]
    # sequence rows cap the whole row at 4 positions, so user 2's first target (5) is lost
    sequence = TrainBatches(SEQS, 4, batch_size=64)
    assert _rows(sequence) == [(1, [1, 2], [2, 3]), (2, [5, 6, 7, 8], [6, 7, 8, 9])]
    assert (batches.num_positions, sequence.num_positions) == (7, 6)


def test_prefix_batches_are_cropped_to_their_longest_history():
    batches = TrainBatches(SEQS, 8, batch_size=2, rows="prefix")
    for batch in batches(3):
        longest = int((batch["history"] > 0).sum(dim=1).max())
        assert batch["history"].shape[1] == longest == batch["targets"].shape[1]
    assert len(batches) == 4  # 7 rows in batches of 2


def _model(num_items: int = 12, **kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(**{**SMALL, "max_history": 8, **kw}), num_items).eval()


@torch.no_grad()
def test_order_positions_give_a_prefix_the_state_it_has_inside_the_longer_row():
    long, short = torch.tensor([[0, 4, 5, 6, 7]]), torch.tensor([[4, 5]])
    order, recency = _model(positions="order"), _model(positions="recency")
    assert torch.allclose(order.encode(long)[0, 2], order.encode(short)[0, -1], atol=1e-5)
    # recency slots count back from the row's end: the same prefix reads differently
    assert not torch.allclose(recency.encode(long)[0, 2], recency.encode(short)[0, -1], atol=1e-3)
    for model in (order, recency):  # left padding never changes a state
        padded = torch.tensor([[0, 0, 0, 4, 5]])
        assert torch.allclose(model.encode(padded)[0, -1], model.encode(short)[0, -1], atol=1e-5)


def test_with_order_positions_prefix_rows_give_the_sequence_rows_loss(syn_loo):
    """Causal attention + order positions: a sequence row's loss at position t is its prefix
    row's loss, so one user's mean over both layouts agree (fails with recency positions)."""
    user = max(range(len(syn_loo.train_sequences)), key=lambda u: len(syn_loo.train_sequences[u]))
    seqs = [syn_loo.train_sequences[user]]
    losses = {}
    for positions in ("order", "recency"):
        model = _model(syn_loo.num_items, positions=positions, max_history=len(seqs[0]))
        with torch.no_grad():
            for rows in ("sequence", "prefix"):
                batch = next(TrainBatches(seqs, len(seqs[0]), batch_size=64, rows=rows)(1))
                losses[positions, rows] = float(model.loss(batch))
    assert losses["order", "prefix"] == pytest.approx(losses["order", "sequence"], rel=1e-5)
    assert losses["recency", "prefix"] != pytest.approx(losses["recency", "sequence"], rel=1e-3)


def test_prefix_rows_train_through_the_config(syn_loo):
    torch.manual_seed(0)
    cfg = SASRecConfig(
        **SMALL, max_history=16, train_rows="prefix", train=TrainConfig(batch_size=256)
    )
    model, batches = SASRec(cfg, syn_loo.num_items), make_batches(cfg, syn_loo, seed=0)
    assert batches.num_positions == sum(len(s) - 1 for s in syn_loo.train_sequences if len(s) > 1)
    batch = next(batches(1))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = float(model.loss(batch).detach())
    for _ in range(20):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch)) < 0.8 * first


@pytest.mark.parametrize(
    ("key", "value"),
    [("positions", "absolute"), ("train_rows", "prefixes"), ("block", "post_norm")],
)
def test_unknown_layout_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"sasrec.{key}: unknown '{value}'"):
        SASRecConfig(**{key: value})


def test_separate_query_and_key_inputs_use_the_fused_projection_split():
    torch.manual_seed(0)
    block = Block(16, 2, 16, 0.0, "sasrec").eval()
    x = torch.randn(3, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    fused = block.attend(x, mask)
    assert torch.allclose(block.attend(x, mask, kv=x), fused, atol=1e-6)
    # queries from one input, keys and values from another: row t of the output mixes kv's rows
    assert not torch.allclose(block.attend(x, mask, kv=2 * x), fused, atol=1e-3)


def test_the_sasrec_block_has_no_input_norm_and_a_relu_feed_forward():
    model = _model(block="sasrec")
    assert isinstance(model.emb_norm, torch.nn.Identity)
    assert isinstance(model.final_norm, torch.nn.LayerNorm)
    assert all(isinstance(b.ffn[1], torch.nn.ReLU) for b in model.blocks)
    assert isinstance(_model(block="post_ln").final_norm, torch.nn.Identity)


def _differ(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_sasrec_rows_levels_part_rows_from_batch_size():
    """Each split level changes one thing against an existing one: the batch size at equal rows,
    or the rows at equal batch size."""
    level = {lv.label: lv.overrides for lv in STUDIES["sasrec_rows"].levels}
    batch = {"sasrec.train.batch_size"}
    assert _differ(level["sequence-b512"], level["sequence"]) == batch
    assert _differ(level["prefix-b128"], level["prefix"]) == batch
    assert _differ(level["prefix-b751"], level["prefix"]) == batch
    assert _differ(level["sequence-b512"], level["prefix"]) == {"sasrec.train_rows"}
    assert _differ(level["prefix-b128"], level["sequence"]) == {"sasrec.train_rows"}


@pytest.mark.slow  # loads Beauty
def test_on_beauty_prefix_b751_takes_the_steps_and_targets_a_step_of_sequence_rows():
    loo = leave_one_out(load_dataset(DataConfig(name="beauty")))
    seq = TrainBatches(loo.train_sequences, 50, 128, rows="sequence")
    matched = TrainBatches(loo.train_sequences, 50, 751, rows="prefix")
    default = TrainBatches(loo.train_sequences, 50, 512, rows="prefix")
    assert len(seq) == len(matched) == 175 and len(default) == 257
    per_step = seq.num_positions / len(seq), matched.num_positions / len(matched)
    assert per_step == pytest.approx((731.6, 750.9), abs=0.1)
    # encoder tokens an epoch: what a prefix row is, at any batch size
    assert matched.lengths.sum() / seq.lengths.sum() == pytest.approx(8.59, abs=0.01)


def test_committed_sasrec_rows_trials_still_count_after_the_levels_were_added():
    study = STUDIES["sasrec_rows"]
    journal = Path(__file__).resolve().parents[1] / "experiments" / "sasrec_rows" / "optuna.jsonl"
    ostudy = optuna.load_study(study_name="sasrec_rows-beauty", storage=read_storage(str(journal)))
    trials = ostudy.get_trials(deepcopy=False)
    assert not [t.number for t in trials if is_stale(study, t)]
    _, table = summarize_trials(study, trials)
    seeds = {lv: sorted(table[lv]["valid/ndcg@10"].values) for lv in study.labels}
    # the four levels measured before the batch-size levels were added keep every seed
    assert all(seeds[lv] == [0, 1, 2] for lv in ("sequence", "order", "prefix", "recbole"))
    assert all(set(v) <= {0, 1, 2} for v in seeds.values())
