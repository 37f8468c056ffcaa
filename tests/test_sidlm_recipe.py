"""The SID-LM recipe knobs: embedding and residual dropout, first-item targets, loss
normalisation (issue 34)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sidrec_core.config import ConfigError, build
from sidrec_core.data.dataset import DataConfig
from sidrec_core.data.sid_examples import IGNORE, collate, training_rows
from sidrec_core.models.sid_vocab import SIDVocab
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm, scratch_lm
from sidrec_core.stages.eval_sidlm import run as run_eval_sidlm
from sidrec_core.stages.train_sidlm import run as run_train_sidlm
from tests.test_sidlm import (
    TINY,
    _batch,
    _model,
    _runner_params,
    _table,
    base_ckpt,  # noqa: F401  (a fixture)
)


@pytest.fixture(scope="module")
def table(syn_ds):
    return _table(syn_ds.num_items)


def _logits(lm, batch) -> torch.Tensor:
    return lm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).logits


def _hooks(lm) -> int:
    return sum(len(m._forward_hooks) for m in lm.modules())


@pytest.mark.parametrize("rates", [(0.1, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_dropout_acts_in_train_mode_only(syn_loo, table, rates):
    embedding, residual = rates
    plain = _model(table)  # rates 0: no hook, the model as it was
    dropped = _model(table, embedding_dropout=embedding, residual_dropout=residual)
    assert _hooks(plain.lm) == 0 and _hooks(dropped.lm) == (embedding > 0) + 2 * (residual > 0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            plain.lm.state_dict().values(), dropped.lm.state_dict().values(), strict=True
        )
    )  # hooks draw no random numbers at build time: same seed, same weights
    batch = _batch(plain, syn_loo, "pretrain")
    dropped.lm.train()
    first, second = _logits(dropped.lm, batch), _logits(dropped.lm, batch)
    assert not torch.equal(first, second)
    dropped.lm.eval()
    plain.lm.eval()
    ref = _logits(plain.lm, batch)
    assert torch.equal(_logits(dropped.lm, batch), ref)
    assert torch.equal(_logits(dropped.lm, batch), ref)  # deterministic in eval
    # decoding (prompt forward, shared-prompt attention, constrained beam) is untouched
    history = {"history": torch.tensor([[0, 0, 3, 7, 9], [0, 0, 0, 0, 2]])}
    for got, want in zip(dropped.recommend(history, 5), plain.recommend(history, 5), strict=True):
        assert torch.equal(got, want)


def test_rate_zero_is_the_plain_qwen2(syn_loo, table):
    """At rate 0 the built LM is bit-identical to a bare Qwen2 of the same seed, in train mode."""
    model = _model(table, embedding_dropout=0.0, residual_dropout=0.0)
    torch.manual_seed(0)
    bare = scratch_lm(model.cfg, SIDVocab.build(table.codebook_sizes))
    batch = _batch(model, syn_loo, "pretrain")
    model.lm.train()
    bare.train()
    assert torch.equal(_logits(model.lm, batch), _logits(bare, batch))


def test_embedding_dropout_rate_and_bad_rates(table):
    model = _model(table, embedding_dropout=0.5)
    model.lm.train()
    emb = model.lm.get_input_embeddings()(torch.arange(1, 200).remainder(len(model.vocab)))
    assert 0.35 < float((emb == 0).float().mean()) < 0.65
    with pytest.raises(ConfigError, match="sidlm.residual_dropout"):
        build(SIDLMConfig, {"residual_dropout": 1.0}, "sidlm")
    with pytest.raises(ConfigError, match="sidlm.embedding_dropout"):
        build(SIDLMConfig, {"arch": "encoder_decoder", "embedding_dropout": 0.1}, "sidlm")


def test_dropout_survives_lora(table, syn_loo, base_ckpt):  # noqa: F811
    cfg = SIDLMConfig(load="lora", checkpoint=base_ckpt, residual_dropout=0.1, **TINY)
    vocab = SIDVocab.build(table.codebook_sizes, base_ckpt)
    lm = build_lm(cfg, vocab)
    assert _hooks(lm) >= 2 * TINY["num_layers"]
    model = SIDLM(lm, vocab, table, cfg, max_history=5)
    batch = _batch(model, syn_loo, "pretrain")
    model.train()
    assert not torch.equal(model.loss(batch), model.loss(batch))


def test_drop_first_item_removes_exactly_those_targets(table):
    loo = SimpleNamespace(
        dataset=SimpleNamespace(user_ids=["a", "b", "c"]),
        train_sequences=[[5], [1, 2, 3], [4, 5, 6, 7, 8, 9, 10]],
    )
    keep = list(training_rows(loo, "pretrain", 3))
    drop = list(training_rows(loo, "pretrain", 3, first_item_targets=False))
    # user c: windows [7..10] and [4..7] (overlapping at 7); user a's one-item window has no
    # target left once its first item is unlabelled, so its row goes
    assert [r["user"] for r in keep] == ["a", "b", "c", "c"]
    assert drop == keep[1:]
    keep_model, drop_model = _model(table), _model(table, first_item_targets="drop")
    for row in drop:
        k, d = keep_model.encoder.train_example(row), drop_model.encoder.train_example(row)
        assert k["input_ids"] == d["input_ids"]
        # <bos> then the first item's 3 tokens: unlabelled under drop, labelled under keep
        assert d["labels"][:4] == [IGNORE] * 4 and k["labels"][1:4] == k["input_ids"][1:4]
        assert d["labels"][4:] == k["labels"][4:] and IGNORE not in k["labels"][1:]


def _zero_logit_model(table, **kw) -> SIDLM:
    """Tied embeddings at 0: every logit is 0, each target token's cross-entropy is ln V."""
    model = _model(table, **kw)
    with torch.no_grad():
        model.lm.get_input_embeddings().weight.zero_()
    return model


def test_fixed_token_normalisation_weighs_every_token_equally(table):
    rows = [
        {"history": [], "target": 3},  # 1 item: 3 target tokens
        {"history": [1, 2], "target": 4},  # 3 items: 9 target tokens
    ]
    per_batch = _zero_logit_model(table)
    per_token = _zero_logit_model(table, loss_normalization="tokens")
    per_token.loss_tokens = 6.0  # e.g. batch size 1 x a mean of 6 target tokens a row
    log_v = math.log(len(per_batch.vocab))
    for row, num_tokens in zip(rows, (3, 9), strict=True):
        batch = collate([per_batch.encoder.train_example(row)], per_batch.pad_id)
        # per batch: every batch's loss is ln V whatever its length, so a token of the short
        # batch weighs 1/3 and one of the long batch 1/9
        assert float(per_batch.loss(batch).detach()) == pytest.approx(log_v, rel=1e-6)
        # fixed count: num_tokens x ln V / 6, every token weighs 1/6 in both batches
        assert float(per_token.loss(batch).detach()) == pytest.approx(
            num_tokens * log_v / 6.0, rel=1e-6
        )
    unset = _zero_logit_model(table, loss_normalization="tokens")
    with pytest.raises(RuntimeError, match="sidlm.loss_normalization=tokens"):
        unset.loss(collate([unset.encoder.train_example(rows[0])], unset.pad_id))


def test_runner_with_every_recipe_knob(syn_prepared, tmp_path, table, syn_ds, syn_loo):
    params = _runner_params(
        syn_prepared,
        tmp_path,
        table,
        embedding_dropout=0.1,
        residual_dropout=0.1,
        first_item_targets="drop",
        loss_normalization="tokens",
    )
    train = run_train_sidlm(params)
    max_history = build(DataConfig, params["data"], "data").max_history
    rows = list(training_rows(syn_loo, "pretrain", max_history))
    targets = sum(3 * (len(r["history"]) + 1) - 3 for r in rows if r["history"])
    assert train["train_examples"] == sum(1 for r in rows if r["history"])
    assert train["train_target_tokens"] == targets
    res = run_eval_sidlm(params)
    assert res["invalid_rate"] == 0.0
    saved = json.loads((tmp_path / "metrics" / "train_sidlm.json").read_text())
    assert saved["train_target_tokens"] == targets
