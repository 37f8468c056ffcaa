"""GRPO of the SID LM: rewards, advantages, group log-probs, KL, clipping, rollouts, a short run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sidrec_core.config import ConfigError, build
from sidrec_core.models.beam import DecodingConfig, PrefixTable, generate_sids
from sidrec_core.models.sampling import sample_sids
from sidrec_core.models.sid_vocab import SIDVocab
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm
from sidrec_core.rl.grpo import (
    GRPO,
    RewardInputs,
    RLConfig,
    RLTrainConfig,
    grpo_loss,
    k3_kl,
    sync_reference,
)
from sidrec_core.rl.logprobs import group_log_probs, per_completion_log_probs
from sidrec_core.rl.rewards import (
    CFScorer,
    RewardWeights,
    advantages,
    compute_rewards,
    ndcg_rule_reward,
    normalize,
    rule_reward,
    semantic_reward,
)
from sidrec_core.rl.rollout import history_tensor, rl_rows, rollout
from sidrec_core.sid.table import SIDTable

TINY = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 64,
}


def _table(num_items: int) -> SIDTable:
    i = np.arange(num_items)
    codes = np.stack([i % 4, (i // 4) % 4, i // 16], 1)
    return SIDTable(np.vstack([-np.ones((1, 3), np.int64), codes]), (4, 4, 4))


def _model(num_items: int = 60, seed: int = 0, sharpen: float = 1.0) -> SIDLM:
    torch.manual_seed(seed)
    table = _table(num_items)
    cfg = SIDLMConfig(**TINY)
    vocab = SIDVocab.build(table.codebook_sizes)
    model = SIDLM(build_lm(cfg, vocab), vocab, table, cfg, max_history=5).eval()
    with torch.no_grad():  # peaked next-token distributions, as a trained model's
        model.lm.lm_head.weight.mul_(sharpen)
    return model


def _prompts(model: SIDLM, histories: list[list[int]]):
    p = model.prompts(history_tensor(histories))
    return p["input_ids"], p["attention_mask"]


HISTORIES = [[3, 7, 12], [5], [40, 41, 2, 9, 33]]


# -- rewards and advantages ------------------------------------------------------------------
def test_constant_group_zero_advantage_and_none_only_centres():
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 3.0]])
    valid = torch.ones_like(r, dtype=torch.bool)
    z = normalize(r, valid, "group")
    assert torch.equal(z[0], torch.zeros(4))
    row = r[1]
    assert torch.allclose(z[1], (row - row.mean()) / (row.std() + 1e-4))
    assert torch.allclose(normalize(r, valid, "none"), r - r.mean(1, keepdim=True))
    batch = normalize(r, valid, "batch")
    assert torch.allclose(batch, (r - r.mean(1, keepdim=True)) / (r.std() + 1e-4))


def test_weights_before_normalising_and_zero_weight_removes_exactly():
    g = torch.Generator().manual_seed(0)
    rule, sem = torch.rand(3, 8, generator=g), torch.rand(3, 8, generator=g)
    valid = torch.ones(3, 8, dtype=torch.bool)
    w = RewardWeights(rule=1.0, ndcg_rule=0.0, semantic=2.5)
    total, adv = advantages({"rule": rule, "semantic": sem}, w, valid)
    assert torch.allclose(total, rule + 2.5 * sem)
    assert torch.allclose(adv, normalize(rule + 2.5 * sem, valid, "group"))
    _, each = advantages({"rule": rule, "semantic": sem}, w, valid, "group", "normalize_then_sum")
    expect = normalize(rule, valid, "group") + 2.5 * normalize(sem, valid, "group")
    assert torch.allclose(each, expect) and not torch.allclose(each, adv)
    # a zero weight: the reward is neither computed nor mixed, even when it would be NaN
    only = RewardWeights(rule=1.0, ndcg_rule=0.0)
    nan = torch.full_like(sem, math.nan)
    for agg in ("sum_then_normalize", "normalize_then_sum"):
        a = advantages({"rule": rule, "semantic": nan}, only, valid, "group", agg)
        b = advantages({"rule": rule}, only, valid, "group", agg)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(compute_rewards(only, rule.long(), rule.long(), torch.ones(3).long())) == {"rule"}


def test_ndcg_rule_exact_values_g16():
    g = 16
    items = torch.arange(1, g + 1).unsqueeze(0).repeat(2, 1)  # distinct items
    ranks = torch.arange(g).expand(2, g)
    targets = torch.tensor([6, 99])  # row 0: hit at rank 5; row 1: no hit
    r = ndcg_rule_reward(items, targets, ranks)
    norm = sum(1 / math.log2(i + 2) for i in range(g))
    expect = torch.tensor([-(1 / math.log2(j + 2)) / norm for j in range(g)])
    expect[5] = 0.0
    assert torch.allclose(r[0], expect, atol=1e-6)
    assert torch.equal(r[1], torch.zeros(g))
    published = {0: -0.164, 1: -0.103, 2: -0.082, 15: -0.040}  # the rounded figures
    for j, v in published.items():
        assert round(float(expect[j]), 3) == v
    assert torch.equal(rule_reward(items, targets)[0], (items[0] == 6).float())


def test_invalid_candidates_reward_zero_and_no_gradient():
    items = torch.tensor([[4, 0, 7, 0], [0, 2, 3, 5]])
    targets = torch.tensor([4, 9])
    ranks = torch.arange(4).expand(2, 4)
    valid = items > 0
    emb = torch.randn(10, 6)

    class Scores(torch.nn.Module):
        def score_all(self, history):
            return torch.arange(10.0).expand(history.shape[0], 10) + 1

    w = RewardWeights(rule=1.0, ndcg_rule=1.0, semantic=1.0, cf=1.0)
    rewards = compute_rewards(
        w, items, ranks, targets, torch.ones(2, 3).long(), emb, CFScorer(Scores())
    )
    for name, r in rewards.items():
        assert torch.equal(r[~valid], torch.zeros(int((~valid).sum()))), name
    assert torch.allclose(rewards["semantic"][0, 0], torch.tensor(1.0))
    assert torch.equal(rewards["cf"][1], torch.tensor([0.0, 3.0, 4.0, 6.0]))
    _, adv = advantages(rewards, w, valid)
    assert torch.equal(adv[~valid], torch.zeros(int((~valid).sum())))
    logp = torch.randn(2, 4, 3, requires_grad=True)
    with torch.no_grad():
        logp[~valid] = -1e4  # garbage log-probs of empty slots must not leak
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach() - 1, adv, valid, 0.1, 0.2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(logp.grad[~valid], torch.zeros_like(logp.grad[~valid]))
    assert logp.grad[valid].abs().sum() > 0
    assert float(semantic_reward(items, targets, emb)[0, 1]) == 0.0


# -- log-probs, KL, clipping -----------------------------------------------------------------
def test_group_log_probs_sum_to_beam_scores_and_match_per_completion():
    model = _model(sharpen=20.0)
    ids, mask = _prompts(model, HISTORIES)
    tokens = model.level_token_ids
    cfg = DecodingConfig(strategy="constrained", beam_width=8)
    out = generate_sids(model.lm, ids, mask, tokens, cfg, model.prefix_table)
    shared = group_log_probs(model.lm, ids, mask, tokens, out.codes)
    assert torch.allclose(shared.sum(-1), out.scores, atol=1e-4)
    weights = torch.randn_like(shared)
    params = [p for p in model.lm.parameters() if p.requires_grad]
    grads_shared = torch.autograd.grad((shared * weights).sum(), params)
    single = per_completion_log_probs(model.lm, ids, mask, tokens, out.codes)
    grads_single = torch.autograd.grad((single * weights).sum(), params)
    assert torch.allclose(shared, single, atol=1e-5)
    for a, b in zip(grads_shared, grads_single, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert sum(float(g.abs().sum()) for g in grads_shared) > 0


def test_kl_zero_for_identical_models_and_reference_sync_formula():
    model = _model()
    ids, mask = _prompts(model, HISTORIES)
    codes = torch.tensor([[0, 1, 2], [3, 3, 0]]).expand(3, 2, 3)
    ref = _model()  # same seed, same weights
    logp = group_log_probs(model.lm, ids, mask, model.level_token_ids, codes)
    ref_logp = group_log_probs(ref.lm, ids, mask, model.level_token_ids, codes)
    assert torch.equal(k3_kl(logp, ref_logp), torch.zeros_like(logp))
    assert (k3_kl(logp, ref_logp + 0.3) > 0).all()
    other = _model(seed=1)
    before = [p.detach().clone() for p in other.lm.parameters()]
    sync_reference(other.lm, model.lm, 0.6)
    for r0, r1, p in zip(before, other.lm.parameters(), model.lm.parameters(), strict=True):
        assert torch.allclose(r1, 0.6 * p + 0.4 * r0, atol=1e-6)


def test_loop_syncs_the_reference_every_tau_updates():
    model = _model()
    start = [p.detach().clone() for p in model.lm.parameters()]
    cfg = RLConfig(
        num_generations=4,
        ref_sync=True,
        ref_sync_alpha=1.0,
        ref_sync_steps=2,
        train=RLTrainConfig(lr=0.01),
    )
    grpo = GRPO(model, cfg, RewardInputs(), total_steps=2, seed=0)
    grpo.step(HISTORIES, [3, 4, 5])  # update 1: no sync yet
    assert all(torch.equal(r, p) for r, p in zip(grpo.reference.parameters(), start, strict=True))
    grpo.step(HISTORIES, [3, 4, 5])  # update 2: alpha = 1 copies the policy
    pairs = zip(grpo.reference.parameters(), model.lm.parameters(), strict=True)
    assert all(torch.equal(r, p) for r, p in pairs)
    assert not all(torch.equal(r, p) for r, p in zip(model.lm.parameters(), start, strict=True))


def test_clipped_tokens_get_zero_gradient():
    old = torch.zeros(1, 4, 2)
    # ratios: 1.5 (A>0, clipped), 1.1 (A>0, inside), 0.5 (A<0, clipped), 0.95 (A<0, inside)
    logp = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.95]))[None, :, None].repeat(1, 1, 2)
    logp.requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = grpo_loss(logp, old, None, adv, valid, beta=0.0, epsilon=0.2)
    loss.backward()
    grad = logp.grad[0, :, 0]
    assert grad[0] == 0 and grad[2] == 0
    assert grad[1] != 0 and grad[3] != 0
    assert stats["clip_fraction"] == pytest.approx(0.5)


# -- rollouts --------------------------------------------------------------------------------
def test_beam_groups_are_distinct_valid_sids_and_sampling_is_valid():
    model = _model(sharpen=5.0)
    ids, mask = _prompts(model, HISTORIES)
    beam = rollout(model, ids, mask, RLConfig(num_generations=12))
    assert beam.valid.all() and (beam.items > 0).all()
    assert all(len(set(row)) == 12 for row in beam.items.tolist())
    assert torch.equal(beam.ranks, torch.arange(12).expand(3, 12))
    cfg = RLConfig(num_generations=32, sampler="sampling", temperature=2.0)
    gen = torch.Generator().manual_seed(0)
    sampled = rollout(model, ids, mask, cfg, gen)
    assert sampled.valid.all()
    # sampling scores are the model's own log-probs of the drawn SIDs
    draws = sample_sids(model.lm, ids, mask, model.level_token_ids, model.prefix_table, 6, 2.0)
    logp = group_log_probs(model.lm, ids, mask, model.level_token_ids, draws.codes)
    assert torch.allclose(logp.sum(-1), draws.scores, atol=1e-4)
    # top_k = 1 is greedy constrained decoding: the constrained beam of width 1
    greedy = sample_sids(
        model.lm, ids, mask, model.level_token_ids, model.prefix_table, 4, 1.0, top_k=1
    )
    one = generate_sids(
        model.lm,
        ids,
        mask,
        model.level_token_ids,
        DecodingConfig(strategy="constrained", beam_width=1),
        model.prefix_table,
    )
    assert torch.equal(greedy.codes, one.codes.expand(-1, 4, -1))


def test_prefix_table_masks_sampling_to_a_sparse_table():
    model = _model()
    # only 5 of the 64 SIDs exist: every draw, even at a high temperature, is one of them
    table = PrefixTable.from_codes(model.table.codes[1:6], model.table.codebook_sizes)
    ids, mask = _prompts(model, HISTORIES)
    out = sample_sids(model.lm, ids, mask, model.level_token_ids, table, 50, temperature=5.0)
    assert (table.lookup(out.codes) > 0).all()


def test_rl_rows_one_random_cut_per_user(syn_loo):
    seqs = syn_loo.train_sequences
    rows = rl_rows(seqs, 3, np.random.default_rng(0))
    eligible = sum(len(s) >= 2 for s in seqs)
    assert len(rows) == eligible and len(rl_rows(seqs, 3, np.random.default_rng(0), 7)) == 7
    assert all(1 <= len(history) <= 3 for history, _ in rows)
    # each row is a contiguous slice of some user's training items followed by its target
    as_text = {" " + " ".join(map(str, s)) + " " for s in seqs}
    for history, target in rows[:20]:
        piece = " " + " ".join(map(str, [*history, target])) + " "
        assert any(piece in t for t in as_text)
    assert rows != rl_rows(seqs, 3, np.random.default_rng(1))


# -- configuration ---------------------------------------------------------------------------
def test_top_k_moved_counts_changed_sets_not_reorderings():
    from sidrec_core.stages.rl_sidlm import top_k_moved

    start = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 0], [0, 0, 0]])
    now = np.array([[3, 2, 1], [4, 5, 9], [7, 9, 0], [0, 0, 0]])
    moved = top_k_moved(start, now, k=3)
    # a reordering is no change; one new item in three changes the set and keeps 2 of 3
    assert moved["valid/top10_changed"] == pytest.approx(2 / 4)
    assert moved["valid/top10_kept"] == pytest.approx((1 + 2 / 3 + 1 / 2 + 1) / 4)
    assert top_k_moved(start, start, k=3) == {"valid/top10_changed": 0.0, "valid/top10_kept": 1.0}


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rl.num_generations"):
        build(RLConfig, {"num_generations": 1}, "rl")
    with pytest.raises(ConfigError, match="rl.weights"):
        build(RLConfig, {"weights": {"rule": 0.0, "ndcg_rule": 0.0}}, "rl")
    with pytest.raises(ConfigError, match="rl.weights.cf"):
        build(RLConfig, {"weights": {"cf": -1.0}}, "rl")
    with pytest.raises(ConfigError, match="rl.ref_sync"):
        build(RLConfig, {"ref_sync": True, "beta": 0.0}, "rl")
    with pytest.raises(ConfigError, match="rl.sampler"):
        build(RLConfig, {"sampler": "greedy"}, "rl")
    # a partial rl.train override keeps the other RL defaults (not the SFT loop's)
    train = build(RLConfig, {"train": {"epochs": 1}}, "rl").train
    assert (train.epochs, train.lr, train.batch_size, train.grad_clip) == (1, 1e-5, 16, 0.3)
    cfg = build(RLConfig, {"num_generations": 16, "weights": {"cf": 0.5}}, "rl")
    with pytest.raises(ValueError, match="rl.num_generations"):
        cfg.check_num_sids(10)
    cfg.check_num_sids(16)
    with pytest.raises(FileNotFoundError, match="rl.weights.cf"):
        cfg.check_reward_inputs(str(tmp_path / "missing.pt"), None)
    (tmp_path / "sasrec.pt").write_bytes(b"x")
    cfg.check_reward_inputs(str(tmp_path / "sasrec.pt"), None)


# -- a short run -----------------------------------------------------------------------------
def _target_fit(model: SIDLM, rows) -> tuple[float, float]:
    """Mean log-prob of the target among all valid SIDs (the constrained decoder's distribution)
    and greedy HR@1 (the arg-max valid SID is the target)."""
    ids, mask = _prompts(model, [h for h, _ in rows])
    every = torch.as_tensor(model.table.codes[1:]).expand(len(rows), -1, -1)
    with torch.no_grad():
        seq = group_log_probs(model.lm, ids, mask, model.level_token_ids, every).sum(-1)
    target = torch.tensor([t for _, t in rows]) - 1
    logp = seq.log_softmax(1).gather(1, target[:, None]).mean()
    return float(logp), float((seq.argmax(1) == target).float().mean())


@pytest.mark.parametrize("sampler", ["beam", "sampling"])
def test_short_grpo_run_raises_target_log_prob(syn_loo, sampler, one_thread):
    model = _model(syn_loo.num_items)  # weak start: random weights
    rows = rl_rows(syn_loo.train_sequences, 5, np.random.default_rng(0), max_users=32)
    cfg = build(
        RLConfig,
        {
            "num_generations": 16,
            "sampler": sampler,
            "beta": 0.01,
            "train": {"epochs": 1, "lr": 0.003, "grad_clip": 1.0, "schedule": "constant"},
        },
        "rl",
    )
    logp_before, hr_before = _target_fit(model, rows)
    grpo = GRPO(model, cfg, RewardInputs(), total_steps=30, seed=0)
    records = [grpo.step(*zip(*rows[i : i + 16], strict=True)) for i in (0, 16) * 15]
    logp_after, hr_after = _target_fit(model, rows)
    assert logp_after > logp_before + 0.5, (logp_before, logp_after)
    assert hr_after >= hr_before + 0.2, (hr_before, hr_after)
    assert records[-1]["rl/kl"] > 0 and 0 <= records[-1]["rl/group_hr@1"] <= 1


# -- the stage -------------------------------------------------------------------------------
def test_rl_stage_tunes_saves_and_evaluates_like_eval_sidlm(syn_prepared, syn_ds, tmp_path):
    import json

    from sidrec_core.data.synthetic import synthetic_embeddings
    from sidrec_core.io import save_npy, save_torch
    from sidrec_core.models.sasrec import SASRec, SASRecConfig
    from sidrec_core.stages.eval_sidlm import run as run_eval_sidlm
    from sidrec_core.stages.rl_sidlm import run
    from sidrec_core.stages.train_sidlm import run as run_train_sidlm

    _table(syn_ds.num_items).save(tmp_path / "sids")
    save_npy(tmp_path / "emb.npy", synthetic_embeddings(syn_ds))
    sasrec = {"hidden_dim": 16, "num_heads": 1, "checkpoint": str(tmp_path / "sasrec.pt")}
    save_torch(sasrec["checkpoint"], SASRec(SASRecConfig(**sasrec), syn_ds.num_items).state_dict())
    params = {
        **syn_prepared,
        "sidlm": {
            **TINY,
            "sid_dir": str(tmp_path / "sids"),
            "output_dir": str(tmp_path / "model"),
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.01},
        },
        "decoding": {"beam_width": 10, "num_return_sequences": 10},
        "eval": {"bootstrap": 0, "ks": [1, 5, 10], "max_valid_users": 20},
        "sasrec": sasrec,
        "embed": {"output": str(tmp_path / "emb.npy")},
        "rl": {
            "num_generations": 4,
            "weights": {"rule": 1.0, "ndcg_rule": 1.0, "semantic": 0.5, "cf": 0.1},
            "max_users_per_epoch": 24,
            "output_dir": str(tmp_path / "rl"),
            "train": {"epochs": 1, "batch_size": 12, "lr": 0.01},
        },
    }
    run_train_sidlm(params)
    before = json.loads(json.dumps(run_eval_sidlm(params)))
    res = run(params)
    saved = json.loads((tmp_path / "metrics" / "rl_sidlm.json").read_text())
    assert saved["test/ndcg@10"] == res["test/ndcg@10"] and saved["rl_steps"] == 2
    for name in ("rule", "ndcg_rule", "semantic", "cf"):
        assert f"rl/reward/{name}_last_epoch" in saved
    assert len(saved["epoch_valid/ndcg@10"]) == 1 and "start_valid/ndcg@10" in saved
    # the start model scored on test as eval_sidlm scores it: the same figures, user by user
    for key in ("test/ndcg@10", "test/hr@5", "test/ranks"):
        assert saved[f"start/{key}"] == before[key], key
    assert saved["valid/ndcg@10"] == saved["best_valid/ndcg@10"] == saved["epoch_valid/ndcg@10"][0]
    moved = saved["epoch_valid/top10_changed"]
    assert len(moved) == 1 and saved["best_valid/top10_changed"] == moved[0]
    assert 0 <= saved["best_valid/top10_kept"] <= 1
    curves = json.loads((tmp_path / "metrics" / "rl_sidlm_curves.json").read_text())
    assert [r["step"] for r in curves] == [1, 2] and "rl/reward/cf" in curves[0]
    # eval_sidlm pointed at the tuned model reproduces the stage's test figures
    sidlm = {**params["sidlm"], "output_dir": str(tmp_path / "rl")}
    again = run_eval_sidlm({**params, "sidlm": {**sidlm, "predictions_dir": str(tmp_path / "p")}})
    assert again["test/ndcg@10"] == pytest.approx(res["test/ndcg@10"], abs=1e-12)
    assert again["test/hr@5"] == pytest.approx(res["test/hr@5"], abs=1e-12)
    with pytest.raises(ConfigError, match="rl.num_generations"):
        run({**params, "rl": {**params["rl"], "num_generations": 65}})
