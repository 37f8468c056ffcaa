"""RPG (sidrec_core.rpg): the OPQ tokenizer, exact scoring, the graph beam, training against
MostPop, config errors, and the two stages, on synthetic data (seconds each)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sidrec_core.config import BaseConfig, ConfigError, build, load_params
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.synthetic import synthetic_embeddings
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import ArtifactError, save_npy
from sidrec_core.models.baselines import MostPop
from sidrec_core.rpg.decoding import GraphDecodingConfig, exact_scores, graph_beam, item_graph
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.rpg.tokenizer import (
    OPQConfig,
    OPQTokenizer,
    build_opq_table,
    resolve_duplicates,
    unpack_codes,
)
from sidrec_core.stages.build_rpg_sids import run as run_build_rpg_sids
from sidrec_core.stages.context import metrics_dir_for
from sidrec_core.stages.eval_rpg import run as run_eval_rpg
from sidrec_core.stages.train_rpg import run as run_train_rpg
from sidrec_core.studies.pipeline import PROJECT_ROOT, load_pipeline
from sidrec_core.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n: int = 2000, dim: int = 32, rank: int = 6, seed: int = 0) -> np.ndarray:
    """Low-rank correlated vectors under a random rotation: the variance is spread across every
    coordinate, so sub-vectors of the raw coordinates are correlated with each other."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dim))
    x += 0.05 * rng.normal(size=(n, dim))
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (x @ q).astype(np.float32)


def test_opq_reconstructs_better_than_pq_on_planted_structure():
    x = _planted()
    errors = {}
    for rotation in ("opq", "none"):
        cfg = OPQConfig(num_codebooks=8, codebook_size=16, rotation=rotation, opq_iters=20)
        tok = OPQTokenizer(cfg, seed=0).fit(x)
        errors[rotation] = tok.reconstruction_mse(x, tok.encode(x))
    assert errors["opq"] < 0.5 * errors["none"], errors


def test_encode_is_the_nearest_centroid_per_digit_and_reproducible():
    x = _planted(n=600, dim=16)
    cfg = OPQConfig(num_codebooks=4, codebook_size=16, opq_iters=5)
    tok = OPQTokenizer(cfg, seed=3).fit(x)
    codes = tok.encode(x)
    sub = tok.rotate(x).reshape(len(x), 4, 4)
    near = np.stack(
        [((sub[:, m, None] - tok.centroids[m][None]) ** 2).sum(-1).argmin(1) for m in range(4)], 1
    )
    np.testing.assert_array_equal(codes, near)
    again = OPQTokenizer(cfg, seed=3).fit(x).encode(x)
    assert again.tobytes() == codes.tobytes()


def test_pca_whitening_gives_unit_covariance_and_survives_save_load(tmp_path):
    x = _planted(n=600, dim=32)
    cfg = OPQConfig(num_codebooks=4, codebook_size=16, opq_iters=5, pca_dim=8)
    tok = OPQTokenizer(cfg, seed=0).fit(x)
    z = tok.project(x)
    assert z.shape == (600, 8)
    np.testing.assert_allclose(np.cov(z.T), np.eye(8), atol=1e-3)
    codes = tok.encode(x)
    # the planted rank is 6: 8 whitened axes keep it, so decoding lands near the input
    assert tok.reconstruction_mse(x, codes) < 0.5 * ((x - x.mean(0)) ** 2).sum(1).mean()
    tok.save(tmp_path)
    again = OPQTokenizer.load(tmp_path, cfg)
    assert again.encode(x).tobytes() == codes.tobytes()
    with pytest.raises(ValueError, match="pca_dim is 0"):
        OPQTokenizer.load(tmp_path, OPQConfig(num_codebooks=4, codebook_size=16))


def test_unpack_codes_reads_faiss_bit_order():
    codes = np.array([[1, 2, 3, 0], [7, 5, 6, 4]])  # 3-bit codes, LSB first
    bits = ((codes[..., None] >> np.arange(3)) & 1).reshape(2, -1)
    packed = np.packbits(np.pad(bits, ((0, 0), (0, 4))), axis=1, bitorder="little")
    np.testing.assert_array_equal(unpack_codes(packed, 4, 3), codes)


def test_duplicates_are_counted_and_resolved_by_the_cheapest_digit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 8)).astype(np.float32)
    x[10] = x[11] = x[12] = x[5]  # four items with one embedding
    cfg = OPQConfig(num_codebooks=4, codebook_size=16, opq_iters=5)
    table, tok, metrics = build_opq_table(x, cfg, seed=0)
    assert metrics["duplicate_items_before"] >= 3
    assert metrics["collision_rate_after"] == 0.0
    codes = table[1:]
    assert len(np.unique(codes, axis=0)) == len(codes)
    assert (codes[5] == tok.encode(x[5:6])[0]).all()  # the first member keeps its SID
    for row in (10, 11, 12):  # the others moved one digit
        assert (codes[row] != codes[5]).sum() == 1
    resolved, changed = resolve_duplicates(codes, tok.rotate(x), tok.centroids)
    assert changed == 0 and (resolved == codes).all()


def test_exact_scores_equal_brute_force_sums():
    torch.manual_seed(0)
    b, m, k, n = 3, 4, 5, 9
    log_probs = torch.randn(b, m, k).log_softmax(-1)
    codes = torch.randint(0, k, (n + 1, m))
    scores = exact_scores(log_probs, codes)
    for u in range(b):
        assert scores[u, 0] == float("-inf")
        for item in range(1, n + 1):
            want = sum(float(log_probs[u, d, codes[item, d]]) for d in range(m))
            assert float(scores[u, item]) == pytest.approx(want, abs=1e-5)


def test_graph_beam_equals_exact_scoring_when_it_covers_the_catalogue():
    torch.manual_seed(1)
    m, k, n = 4, 6, 12
    flat = torch.randperm(k**m)[:n]  # distinct SIDs: no tied scores
    body = torch.stack([flat // k**d % k for d in range(m)], 1)
    codes = torch.cat([torch.zeros(1, m, dtype=torch.long), body])
    log_probs = torch.randn(5, m, k).mul(3).log_softmax(-1)
    code_emb = torch.randn(m, k, 8)
    cfg = GraphDecodingConfig(strategy="graph", beam_width=n, num_edges=n, propagation_steps=2)
    adjacency = item_graph(code_emb, codes, cfg.num_edges, chunk_size=5)
    assert adjacency.shape == (n + 1, n) and (adjacency[1:] > 0).all()
    ids, scores = graph_beam(log_probs, codes, adjacency, 6, cfg, torch.Generator().manual_seed(0))
    exact = exact_scores(log_probs, codes).topk(6, dim=1)
    torch.testing.assert_close(scores, exact.values)
    assert torch.equal(ids, exact.indices)


def test_item_graph_neighbours_follow_code_similarity():
    torch.manual_seed(2)
    codes = torch.tensor([[0, 0], [1, 1], [1, 1], [1, 2], [0, 3], [2, 0]])
    code_emb = torch.randn(2, 4, 16)
    adjacency = item_graph(code_emb, codes, num_edges=2, chunk_size=2)
    # items 1 and 2 share every code: each is the other's (tied) nearest
    assert set(adjacency[1].tolist()) == {1, 2} and set(adjacency[2].tolist()) == {1, 2}


def _small(**over) -> RPGConfig:
    base = dict(
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        ffn_dim=64,
        temperature=0.1,
        embedding_dropout=0.1,
        attention_dropout=0.1,
        max_history=20,
        sid=OPQConfig(num_codebooks=4, codebook_size=8, opq_iters=10),
    )
    return RPGConfig(**{**base, **over})


def test_training_beats_mostpop(syn_loo):
    cfg = _small()
    x = synthetic_embeddings(syn_loo.dataset)
    table, _, _ = build_opq_table(x, cfg.sid, seed=0)
    torch.manual_seed(0)
    model = RPG(cfg, torch.as_tensor(table), cfg.sid.codebook_size)
    batches = TrainBatches(syn_loo.train_sequences, cfg.max_history, 32, seed=0)
    test = syn_loo.split("test", cfg.max_history)
    ev = EvalConfig(bootstrap=0, ks=(5, 10))
    fit(
        model,
        batches,
        lambda: {"valid/ndcg@10": 0.0},
        TrainConfig(epochs=15, lr=3e-3, patience=0),
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
    )
    rpg = evaluate(model, test, ev, num_items=syn_loo.num_items).metrics
    pop = evaluate(MostPop(syn_loo), test, ev, num_items=syn_loo.num_items).metrics
    assert rpg["test/ndcg@10"] > pop["test/ndcg@10"] + 0.02, (rpg, pop)
    model.decoding = GraphDecodingConfig(strategy="graph", beam_width=8, num_edges=20)
    graph = evaluate(model, test, ev, num_items=syn_loo.num_items).metrics
    assert graph["test/hr@10"] > pop["test/hr@10"]


def test_loss_is_the_mean_of_per_digit_cross_entropies():
    cfg = _small(embedding_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    codes = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.randint(0, 8, (10, 4))])
    model = RPG(cfg, codes, 8).eval()
    torch.nn.init.normal_(model.head_weight, std=0.3)  # digits' heads differ (zero at init)
    history = torch.tensor([[0, 3, 4], [5, 6, 7]])
    targets = torch.tensor([[0, 4, 9], [6, 7, 1]])
    with torch.no_grad():
        loss = model.loss({"history": history, "targets": targets})
        states = model.encode(history)
    per_target = []
    for b, t in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2)):
        logits = model.digit_logits(states[b, t][None])[0].detach()  # [M, K]
        item = int(targets[b, t])
        digits = [-logits[d].log_softmax(-1)[codes[item, d]] for d in range(4)]
        per_target.append(sum(digits) / 4)
    assert float(loss) == pytest.approx(float(sum(per_target) / len(per_target)), rel=1e-5)


def test_token_normalised_loss_weighs_every_target_alike_across_batches():
    """With "tokens" a batch's loss is its targets' summed loss / a fixed count, so a target's
    gradient does not depend on how many targets share its batch ("batch" divides by them)."""
    torch.manual_seed(0)
    codes = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.randint(0, 8, (10, 4))])
    short = {"history": torch.tensor([[0, 0, 3]]), "targets": torch.tensor([[0, 0, 4]])}
    long = {"history": torch.tensor([[5, 6, 7]]), "targets": torch.tensor([[6, 7, 1]])}
    losses = {}
    for norm in ("batch", "tokens"):
        cfg = _small(embedding_dropout=0.0, attention_dropout=0.0, loss_normalization=norm)
        torch.manual_seed(1)
        model = RPG(cfg, codes, 8).eval()
        if norm == "tokens":
            with pytest.raises(RuntimeError, match="loss_tokens"):
                model.loss(short)
        model.loss_tokens = 2.0
        losses[norm] = [float(model.loss(b)) for b in (short, long)]
    batch, tokens = losses["batch"], losses["tokens"]
    # one target / 2 and three targets / 2, against each batch's own mean
    assert tokens[0] == pytest.approx(batch[0] / 2, rel=1e-5)
    assert tokens[1] == pytest.approx(batch[1] * 3 / 2, rel=1e-5)


@pytest.mark.parametrize(
    "section, key",
    [
        ({"loss_normalization": "mean"}, "rpg.loss_normalization"),
        ({"hidden_dim": 30, "num_heads": 4}, "rpg.hidden_dim"),
        ({"temperature": 0}, "rpg.temperature"),
        ({"attention_dropout": 1.0}, "rpg.attention_dropout"),
        ({"train_rows": "window"}, "rpg.train_rows"),
        ({"sid": {"codebook_size": 100}}, "rpg.sid.codebook_size"),
        ({"sid": {"rotation": "pca"}}, "rpg.sid.rotation"),
        ({"sid": {"pca_dim": 12, "num_codebooks": 8}}, "rpg.sid.pca_dim"),
        ({"decoding": {"beam_width": 0}}, "rpg.decoding.beam_width"),
        ({"decoding": {"strategy": "beam"}}, "rpg.decoding.strategy"),
        ({"train": {"lr": 0}}, "rpg.train.lr"),
    ],
)
def test_bad_config_values_name_the_key(section, key):
    with pytest.raises(ConfigError) as err:
        build(RPGConfig, section, "rpg")
    message = str(err.value)
    assert "\n" not in message and key in message, message


def test_dim_not_divisible_by_codebooks_names_the_key():
    with pytest.raises(ValueError, match="rpg.sid.num_codebooks=5 must divide"):
        OPQTokenizer(OPQConfig(num_codebooks=5, codebook_size=8)).fit(_planted(n=100, dim=16))


def test_opq_with_fewer_items_than_dimensions_fails_with_the_key_not_in_faiss():
    x = _planted(n=12, dim=16)
    with pytest.raises(ValueError, match=r"rpg.sid.rotation=opq .* 12 items x 16 dimensions"):
        OPQTokenizer(OPQConfig(num_codebooks=4, codebook_size=8, opq_iters=2)).fit(x)
    # a plain product quantiser has no such bound
    OPQTokenizer(OPQConfig(num_codebooks=4, codebook_size=8, rotation="none")).fit(x)


def stage_params(params, ds, tmp_path, **rpg) -> dict:
    """``params`` with a small ``rpg`` section (and ``rpg`` overrides) whose stages write under
    ``tmp_path``, on synthetic embeddings of ``ds``."""
    emb = tmp_path / "emb.npy"
    save_npy(emb, synthetic_embeddings(ds))
    params["eval"] = {"bootstrap": 0, "ks": [5, 10]}
    params["rpg"] = {
        "hidden_dim": 32,
        "num_layers": 1,
        "num_heads": 2,
        "ffn_dim": 64,
        "temperature": 0.1,
        "checkpoint": str(tmp_path / "rpg" / "model.pt"),
        "sid": {
            "num_codebooks": 4,
            "codebook_size": 8,
            "opq_iters": 5,
            "embeddings": str(emb),
            "output_dir": str(tmp_path / "sids_rpg"),
        },
        "train": {"epochs": 2, "batch_size": 64},
        **rpg,
    }
    return params


def test_stages_build_train_and_score(syn_prepared, syn_ds, tmp_path):
    params = stage_params(syn_prepared, syn_ds, tmp_path)
    sids = run_build_rpg_sids(params)
    assert sids["collision_rate_after"] == 0.0 and len(sids["utilization"]) == 4
    assert sids["sha256/wrote/rpg_sids"] and sids["fit_items"] <= syn_ds.num_items
    again = run_build_rpg_sids(params)
    assert again["sha256/wrote/rpg_sids"] == sids["sha256/wrote/rpg_sids"]
    trained = run_train_rpg(params)
    assert trained["epochs"] == 2 and 0 < trained["best_valid/ndcg@10"] <= 1
    assert not any(k.startswith("test/") for k in trained), "train_rpg leaves scoring to eval_rpg"
    assert (tmp_path / "rpg" / "model.pt").exists()
    exact = run_eval_rpg(params)
    for key in ("test/hr@10", "test/ndcg@10", "valid/ndcg@5", "test/ranks", "sha256/read/rpg"):
        assert key in exact, key
    written = json.loads((tmp_path / "metrics" / "eval_rpg.json").read_text())
    assert written["test/ndcg@10"] == exact["test/ndcg@10"]
    # a beam as wide as the catalogue's graph walk ranks like exact scoring at k = 10
    params["rpg"]["decoding"] = {"strategy": "graph", "beam_width": 64, "num_edges": 64}
    beam = run_eval_rpg(params)
    assert beam["graph_seconds"] > 0
    assert beam["test/ndcg@10"] == pytest.approx(exact["test/ndcg@10"], abs=1e-9)


def test_a_checkpoint_of_other_settings_fails_naming_the_file(tmp_path):
    codes = torch.randint(0, 256, (11, 4))
    cfg = RPGConfig(hidden_dim=16, num_heads=2, ffn_dim=32, checkpoint=str(tmp_path / "m.pt"))
    torch.save(RPG(cfg, codes, cfg.sid.codebook_size).state_dict(), cfg.checkpoint)
    wider = dataclasses.replace(cfg, hidden_dim=32)
    with pytest.raises(
        ArtifactError, match=r"m\.pt: not a model .*size mismatch for .*re-run train_rpg"
    ):
        RPG.load(wider, codes)
    assert RPG.load(cfg, codes).code_emb.shape == (4, 256, 16)


def test_a_moved_nested_output_moves_the_metrics_beside_it():
    moved = {"rpg": build(RPGConfig, {"sid": {"output_dir": "/tmp/x/sids"}}, "rpg")}
    assert metrics_dir_for(BaseConfig(), moved, "rpg.sid.output_dir") == "/tmp/x/sids/metrics"
    default = {"rpg": RPGConfig()}
    assert metrics_dir_for(BaseConfig(), default, "rpg.sid.output_dir") == BaseConfig.metrics_dir


def test_train_rpg_tracks_every_rpg_key_but_decoding_and_the_sid_settings():
    """A key train_rpg reads but DVC does not track would let the run-cache restore a model of
    other settings; a listed key missing from params.yaml fails ``dvc repro``."""
    stages = load_pipeline()
    listed = {p for p in stages["train_rpg"].params if p.startswith("rpg")}
    fields = {f"rpg.{f.name}" for f in dataclasses.fields(RPGConfig)}
    assert listed == fields - {"rpg.decoding", "rpg.sid"}
    assert "rpg" in stages["eval_rpg"].params
    written = load_params(PROJECT_ROOT / "params.yaml")["rpg"]
    assert {f"rpg.{k}" for k in written} >= listed
