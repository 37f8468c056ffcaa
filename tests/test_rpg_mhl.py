"""Masked History Learning for RPG (sidrec_core.rpg.mhl): which codewords are masked, the
entropy they are ranked by, the curriculum's ratio, the loss, and the stages with it on, on
synthetic data (seconds each)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sidrec_core.config import ConfigError, build
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.synthetic import synthetic_embeddings
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.rpg import mhl
from sidrec_core.rpg.mhl import Curriculum, MHLConfig, codeword_entropy, select_units
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.rpg.tokenizer import build_opq_table
from sidrec_core.stages.build_rpg_sids import run as run_build_rpg_sids
from sidrec_core.stages.eval_rpg import run as run_eval_rpg
from sidrec_core.stages.train_rpg import run as run_train_rpg
from sidrec_core.train import Resume, TrainConfig, fit
from sidrec_core.utils import seed_everything
from tests.test_resume import Killed, _KillAfter, _same
from tests.test_rpg import _small, stage_params

pytestmark = pytest.mark.usefixtures("one_thread")

CODES = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.randint(0, 8, (10, 4))])


def _cfg(**mhl) -> RPGConfig:
    return _small(embedding_dropout=0.0, attention_dropout=0.0, mhl=MHLConfig(**mhl))


def test_the_top_n_eligible_units_are_masked_with_n_drawn_up_to_the_ratio():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(200, 10, generator=gen)
    eligible = torch.ones(200, 10, dtype=torch.bool)
    eligible[:, :4] = False  # 6 eligible units a row
    eligible[:100, :8] = False  # 2 eligible units: floor(0.3 x 2) = 0, none masked
    mask = select_units(scores, eligible, 0.3, gen)
    assert not (mask & ~eligible).any()
    assert not mask[:100].any()
    counts = mask[100:].sum(1)
    assert counts.min() == 1 and counts.max() == 1  # floor(0.3 x 6) = 1
    assert torch.equal(mask[100:].float().argmax(1), scores[100:, 4:].argmax(1) + 4)
    wide = select_units(scores[100:], eligible[100:], 1.0, gen)
    counts = wide.sum(1)
    assert counts.min() >= 1 and counts.max() <= 6 and len(set(counts.tolist())) > 3
    top = scores[100:, 4:].argsort(1, descending=True)
    for i, n in enumerate(counts.tolist()):  # the n best scores of the row
        assert set(top[i, :n].add(4).tolist()) == set(wide[i].nonzero().flatten().tolist())


def test_entropy_is_that_of_the_prediction_from_the_state_before_the_item():
    torch.manual_seed(0)
    model = RPG(_cfg(), CODES, 8).train()
    torch.nn.init.normal_(model.head_weight, std=0.3)
    history = torch.tensor([[0, 3, 4, 5], [6, 7, 1, 2]])
    entropy = codeword_entropy(model, history)
    assert model.training, "the entropy pass leaves the model's mode as it found it"
    with torch.no_grad():
        states = model.eval().encode(history)
    assert torch.isinf(entropy[0, :2]).all() and torch.isinf(entropy[1, 0]).all()
    for b, t in ((0, 2), (0, 3), (1, 1), (1, 3)):
        log_p = F.log_softmax(model.digit_logits(states[b, t - 1][None])[0], -1)
        want = -(log_p.exp() * log_p).sum(-1)
        assert torch.allclose(entropy[b, t], want, atol=1e-5)


def test_a_masked_digit_enters_the_mean_as_its_mask_vector():
    model = RPG(_cfg(granularity="token"), CODES, 8)
    items = torch.tensor([[3, 4]])
    masked = torch.tensor([[[True, False, False, False], [True, True, True, True]]])
    got = model.item_inputs(items, masked)
    levels = torch.arange(4)
    first = torch.cat([model.mask_emb[:1], model.code_emb[levels[1:], CODES[3, 1:]]]).mean(0)
    assert torch.allclose(got[0, 0], first) and torch.allclose(got[0, 1], model.mask_emb.mean(0))


def test_mhl_off_adds_no_parameters_and_on_leaves_the_others_initialised_alike():
    torch.manual_seed(3)
    off = RPG(_cfg(), CODES, 8).state_dict()
    torch.manual_seed(3)
    on = RPG(_cfg(granularity="item"), CODES, 8).state_dict()
    assert set(on) - set(off) == {"mask_emb", "recon_weight", "recon_bias"}
    assert all(torch.equal(off[k], on[k]) for k in off)


def test_linear_curriculum_random_then_falling_ratio_then_none():
    cur = Curriculum(
        MHLConfig(granularity="token", ratio=0.3, random_epochs=2, entropy_epochs=3),
        "valid/ndcg@10",
        seed=0,
    )
    seen = []
    for epoch in range(1, 8):
        seen.append((cur.policy, round(cur.ratio, 6)))
        cur.on_train_epoch_end(epoch, {})
        cur.on_validation_end(epoch, {"valid/ndcg@10": 0.1})
    assert seen == [
        ("random", 0.3),
        ("random", 0.3),
        ("entropy", 0.3),
        ("entropy", 0.2),
        ("entropy", 0.1),
        ("none", 0.0),
        ("none", 0.0),
    ]


def test_plateau_curriculum_steps_down_a_tenth_after_phase_two_plateaus():
    cfg = MHLConfig(
        granularity="token", ratio=0.2, random_epochs=1, schedule="plateau", plateau_evals=2
    )
    cur = Curriculum(cfg, "valid/ndcg@10", seed=0)
    ratios = []
    for epoch, value in enumerate([0.1, 0.09, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3], start=1):
        cur.on_train_epoch_end(epoch, {})
        cur.on_validation_end(epoch, {"valid/ndcg@10": value})
        ratios.append(round(cur.ratio, 6))
    # epoch 2's drop is phase II's first bad validation (phase I's is not counted)
    assert ratios == [0.2, 0.2, 0.2, 0.2, 0.18, 0.18, 0.18, 0.16]


def test_curriculum_state_round_trips_with_its_generator():
    cfg = MHLConfig(granularity="token", random_epochs=1, entropy_epochs=4)
    cur = Curriculum(cfg, "valid/ndcg@10", seed=5)
    for epoch in (1, 2):
        cur.on_train_epoch_end(epoch, {})
        cur.on_validation_end(epoch, {"valid/ndcg@10": 0.0})
    torch.rand(3, generator=cur.generator)
    again = Curriculum(cfg, "valid/ndcg@10", seed=0)
    again.load_state_dict(cur.state_dict())
    assert (again.epoch, again.ratio, again.policy) == (cur.epoch, cur.ratio, cur.policy)
    assert torch.equal(
        torch.rand(4, generator=again.generator), torch.rand(4, generator=cur.generator)
    )


def test_the_loss_adds_the_masked_codewords_cross_entropy_to_the_next_item_loss(monkeypatch):
    torch.manual_seed(0)
    model = RPG(_cfg(granularity="token", weight=0.5), CODES, 8).eval()
    torch.nn.init.normal_(model.recon_weight, std=0.3)
    model.curriculum = cur = Curriculum(model.cfg.mhl, "valid/ndcg@10", seed=0)
    batch = {
        "history": torch.tensor([[0, 3, 4], [5, 6, 7]]),
        "targets": torch.tensor([[0, 4, 9], [6, 7, 1]]),
    }
    masked = torch.zeros(2, 3, 4, dtype=torch.bool)
    masked[0, 2, 1] = masked[1, 0, :] = True
    monkeypatch.setattr(mhl, "digit_mask", lambda *_: masked)  # the draw is tested above
    with torch.no_grad():
        got = model.loss(batch)
        states = model.encode(batch["history"], masked)
        want = model.next_item_loss(states, batch["targets"])
        terms = []
        for b, t, m in ((0, 2, 1), (1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 0, 3)):
            state = states[b, t]
            h = state + F.silu(state @ model.recon_weight[m] + model.recon_bias[m])
            cos = F.normalize(model.code_emb[m], dim=-1) @ F.normalize(h, dim=-1)
            code = CODES[int(batch["history"][b, t]), m]
            terms.append(-F.log_softmax(cos / model.cfg.temperature, -1)[code])
    assert float(got) == pytest.approx(float(want + 0.5 * sum(terms) / 5), rel=1e-5)
    cur.ratio = 0.0  # phase III: RPG's own loss
    with torch.no_grad():
        plain = model.next_item_loss(model.encode(batch["history"]), batch["targets"])
        assert float(model.loss(batch)) == pytest.approx(float(plain), rel=1e-6)


def test_training_follows_the_curriculum_and_records_it(syn_loo):
    cfg = _cfg(granularity="item", ratio=0.5, random_epochs=1, entropy_epochs=2)
    x = synthetic_embeddings(syn_loo.dataset)
    table, _, _ = build_opq_table(x, cfg.sid, seed=0)
    torch.manual_seed(0)
    model = RPG(cfg, torch.as_tensor(table), cfg.sid.codebook_size)
    batches = TrainBatches(syn_loo.train_sequences, cfg.max_history, 64, seed=0)
    model.curriculum = cur = Curriculum(cfg.mhl, "valid/ndcg@10", seed=0)
    result = fit(
        model,
        batches,
        lambda: {"valid/ndcg@10": 0.5},
        TrainConfig(epochs=4, lr=3e-3, patience=0),
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
        callbacks=[cur],
    )
    # masked through epoch 3 (1 random + 2 entropy-guided), then next-item prediction alone
    ratios = [r["mhl/ratio"] for r in result.history]
    assert ratios == [0.5, 0.5, 0.25, 0.0]
    recon = [r.get("train/reconstruction_loss") for r in result.history]
    assert all(v is not None and v > 0 for v in recon[:3]) and recon[3] is None


@pytest.mark.parametrize(
    "section, key",
    [
        ({"granularity": "mixed"}, "rpg.mhl.granularity"),
        ({"ratio": 0}, "rpg.mhl.ratio"),
        ({"schedule": "step"}, "rpg.mhl.schedule"),
        ({"random_epochs": -1}, "rpg.mhl.random_epochs"),
    ],
)
def test_bad_mhl_values_name_the_key(section, key):
    with pytest.raises(ConfigError) as err:
        build(RPGConfig, {"mhl": section}, "rpg")
    message = str(err.value)
    assert "\n" not in message and key in message, message


def test_the_plateau_schedule_asks_for_patience_beyond_its_ten_steps():
    plateau = {"granularity": "token", "schedule": "plateau", "plateau_evals": 5}
    with pytest.raises(ConfigError, match=r"rpg.train.patience=8 .* 0 or above 50"):
        build(RPGConfig, {"mhl": plateau, "train": {"patience": 8}}, "rpg")
    build(RPGConfig, {"mhl": plateau, "train": {"patience": 0}}, "rpg")
    build(RPGConfig, {"mhl": {**plateau, "schedule": "linear"}, "train": {"patience": 8}}, "rpg")


def test_stages_train_with_mhl_and_score_its_checkpoint(syn_prepared, syn_ds, tmp_path):
    mhl_on = {"granularity": "token", "random_epochs": 1, "entropy_epochs": 1}
    params = stage_params(
        syn_prepared, syn_ds, tmp_path, mhl=mhl_on, train={"epochs": 3, "batch_size": 64}
    )
    run_build_rpg_sids(params)
    trained = run_train_rpg(params)
    assert trained["epochs"] == 3
    curves = json.loads((tmp_path / "metrics" / "train_rpg_curves.json").read_text())
    assert [c["mhl/ratio"] for c in curves] == [0.15, 0.15, 0.0]
    assert "train/reconstruction_loss" in curves[0] and "train/reconstruction_loss" not in curves[2]
    scored = run_eval_rpg(params)  # RPG.load builds the mask and reconstruction parameters
    assert 0 <= scored["test/ndcg@10"] <= 1


def _mhl_fit(loo, table, resume=None, on_epoch_end=None):
    """One fresh 'process' of RPG with MHL (entropy-guided from epoch 2), as train_rpg builds it."""
    seed_everything(0)
    cfg = _cfg(granularity="token", ratio=0.3, random_epochs=1, entropy_epochs=2)
    model = RPG(cfg, torch.as_tensor(table), cfg.sid.codebook_size)
    batches = TrainBatches(loo.train_sequences, cfg.max_history, 64, seed=0)
    model.curriculum = cur = Curriculum(cfg.mhl, "valid/ndcg@10", seed=0)
    valid = loo.split("valid", cfg.max_history)
    result = fit(
        model,
        batches,
        lambda: evaluate(model, valid, EvalConfig(), num_items=loo.num_items).metrics,
        TrainConfig(epochs=4, lr=3e-3, patience=0),
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
        resume=None if resume is None else Resume(resume, {"seed": 0}, stateful=[batches, cur]),
        callbacks=[cur] if on_epoch_end is None else [cur, on_epoch_end],
    )
    return result, model.state_dict()


def test_a_resumed_mhl_run_ends_as_an_uninterrupted_one(syn_loo, tmp_path):
    """The curriculum's ratio and masking generator travel with the resume checkpoint."""
    table, _, _ = build_opq_table(synthetic_embeddings(syn_loo.dataset), _cfg().sid, seed=0)
    full = _mhl_fit(syn_loo, table)
    with pytest.raises(Killed):
        _mhl_fit(syn_loo, table, resume=tmp_path / "state.pt", on_epoch_end=_KillAfter(2))
    _same(full, _mhl_fit(syn_loo, table, resume=tmp_path / "state.pt"))
