"""ETEGRec: alignment losses, phase freezing, codebook gradients, re-encoding, tying, the
alternating schedule and the stages, on the synthetic corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sidrec_core.config import build
from sidrec_core.data.sid_examples import training_rows
from sidrec_core.data.synthetic import synthetic_embeddings
from sidrec_core.etegrec.align import AlignHeads, code_log_probs, psa_loss, sia_loss
from sidrec_core.etegrec.collab import item_vectors
from sidrec_core.etegrec.config import ETEGRecConfig
from sidrec_core.etegrec.model import ETEGRecLM
from sidrec_core.etegrec.trainer import ETEGRecTrainer, check_sid_config, encode_table
from sidrec_core.io import save_npy, save_torch
from sidrec_core.models.sidlm import SIDLMConfig
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.registry import make_tokenizer
from sidrec_core.stages.eval_etegrec import run as run_eval_etegrec
from sidrec_core.stages.train_etegrec import run as run_train_etegrec

pytestmark = pytest.mark.usefixtures("one_thread")

LM = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 64,
}
SID = {
    "method": "rqvae",
    "codebook_size": 8,
    "kmeans_iters": 5,
    "rqvae": {
        "hidden_dims": [32],
        "latent_dim": 8,
        "epochs": 5,
        "batch_size": 16,
        "quantizer": {"ema": False, "restart_unused": False},
    },
}


def _setup(syn_loo, tie: bool = False, **etegrec):
    sid = build(SIDConfig, SID, "sid")
    x = synthetic_embeddings(syn_loo.dataset)
    tok = make_tokenizer(sid, dim=x.shape[1], seed=0)
    tok.fit(x)
    table, _ = encode_table(tok, x, sid, 0)
    torch.manual_seed(0)
    books = (lambda: tok.quantizer.codebooks) if tie else None
    model = ETEGRecLM.build(SIDLMConfig(**LM), table, 5, books)
    heads = AlignHeads(32, tok.quantizer.dim, x.shape[1])
    cfg = ETEGRecConfig(batch_size=32, warmup_epochs=0, tie_codebooks=tie, **etegrec)
    rows = list(training_rows(syn_loo, "pretrain", 5))
    return ETEGRecTrainer(tok, model, heads, x, rows, cfg, sid)


def test_sia_is_zero_for_identical_distributions_and_symmetric():
    torch.manual_seed(0)
    p = [F.log_softmax(torch.randn(4, 6), 1) for _ in range(3)]
    q = [F.log_softmax(torch.randn(4, 6), 1) for _ in range(3)]
    assert float(sia_loss(p, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(sia_loss(p, q)) == pytest.approx(float(sia_loss(q, p)), rel=1e-6)
    assert float(sia_loss(p, q)) > 0


def test_psa_equals_hand_computed_infonce():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    t = 0.5
    # cosine similarities: a0.b0 = 0.6, a0.b1 = 0, a1.b0 = 0.8, a1.b1 = 1
    s = np.array([[0.6, 0.0], [0.8, 1.0]]) / t
    rows = -np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(2)])
    cols = -np.mean([s[i, i] - np.log(np.exp(s[:, i]).sum()) for i in range(2)])
    assert float(psa_loss(a, b, t)) == pytest.approx(rows + cols, rel=1e-5)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_each_phase_freezes_the_other_model(syn_loo):
    tr = _setup(syn_loo)
    batch = next(tr.batches(0))
    rec0, tok0 = _snapshot(tr.rec_modules), _snapshot(tr.tok)
    tr.step(batch, "tokenizer", align=True)
    rec1, tok1 = _snapshot(tr.rec_modules), _snapshot(tr.tok)
    assert _same(rec0, rec1) and not _same(tok0, tok1)
    tr.step(batch, "recommender", align=True)
    assert _same(tok1, _snapshot(tr.tok)) and not _same(rec1, _snapshot(tr.rec_modules))


def test_codebooks_receive_gradient_from_sia_and_ema_is_refused(syn_loo):
    tr = _setup(syn_loo)
    z = tr.tok.encoder(tr.xt[:8]).detach()
    loss = sia_loss(code_log_probs(tr.tok.quantizer, z), code_log_probs(tr.tok.quantizer, z + 0.3))
    loss.backward()
    grad = tr.tok.quantizer.codebooks.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    for key in ("ema", "restart_unused"):
        bad = build(SIDConfig, {**SID, "rqvae": {**SID["rqvae"], "quantizer": {key: True}}}, "sid")
        with pytest.raises(ValueError, match=f"sid.rqvae.quantizer.{key}"):
            check_sid_config(bad)


def test_reencoding_after_a_tokenizer_step_gives_a_valid_decodable_table(syn_loo):
    tr = _setup(syn_loo, tok_lr=0.05)
    old = tr.model.table
    for batch in tr.batches(0):
        tr.step(batch, "tokenizer", align=True)
    stats = tr.reencode()
    new = tr.model.table
    assert new.codes.shape == old.codes.shape and new.codebook_sizes == old.codebook_sizes
    assert new.is_unique() and 0.0 <= stats["sid_changed_fraction"] <= 1.0
    tr.model.eval()
    tr.model.reset_candidate_stats()
    history = torch.as_tensor(np.stack([syn_loo.split("test", 5).histories[i] for i in range(8)]))
    ids, _ = tr.model.recommend({"history": history}, 10)
    assert tr.model.candidate_stats["generated"] > 0 and tr.model.candidate_stats["invalid"] == 0
    assert (ids > 0).all()


def test_tied_level_logits_are_projected_state_times_codebook(syn_loo):
    tr = _setup(syn_loo, tie=True)
    h = torch.randn(5, 32)
    books = tr.tok.quantizer.codebooks
    for level in range(3):
        expect = (h @ tr.model.code_proj.weight) @ books[level].T
        assert torch.allclose(tr.model.level_logits(h, level), expect, atol=1e-5)
    tr.model.materialize()  # the saved model computes the same logits with its own head
    ids = tr.model.vocab.level_token_ids[1]
    head = tr.model.lm.get_output_embeddings().weight[ids]
    assert torch.allclose(h @ head.T, (h @ tr.model.code_proj.weight) @ books[1].T, atol=1e-5)


def _rec_loss(tr, n=4):
    with torch.no_grad():
        tr.model.eval()
        return float(np.mean([float(tr.model.loss_and_states(b)[0]) for b in tr.batches(99)][:n]))


def test_alternating_cycles_lower_reconstruction_and_recommendation_loss(syn_loo):
    tr = _setup(syn_loo, cycles=3, finetune_epochs=0, tok_lr=0.01, freeze_patience=0)
    recon0, rec0 = tr.tok.reconstruction_mse(tr.x, tr.tok.encode(tr.x)), _rec_loss(tr)
    out = tr.train()
    assert out["tok_steps"] > 0 and out["rec_steps"] == 3 * tr.steps_per_epoch()
    assert out["recon_mse"] < recon0
    assert _rec_loss(tr) < rec0


def test_item_vectors_concatenate_unit_parts():
    table = np.vstack([np.zeros((1, 2)), [[3.0, 4.0], [0.0, 2.0]]])
    text = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    both = item_vectors(table, text, "both")  # each part unit-length before concatenation
    assert both.shape == (2, 5) and np.allclose(np.linalg.norm(both[:, :3], axis=1), 1.0)
    assert np.allclose(both[0, 3:], [0.6, 0.8])
    assert np.array_equal(item_vectors(table, None, "collaborative"), table[1:].astype(np.float32))


def test_stage_trains_saves_and_evaluates(syn_prepared, syn_ds, tmp_path):
    save_npy(tmp_path / "emb.npy", synthetic_embeddings(syn_ds))
    params = {
        **syn_prepared,
        "sid": {**SID, "embeddings": str(tmp_path / "emb.npy")},
        "sidlm": LM,
        "etegrec": {
            "cycles": 1,
            "finetune_epochs": 1,
            "batch_size": 64,
            "sid_dir": str(tmp_path / "sids"),
            "output_dir": str(tmp_path / "model"),
            "predictions_dir": str(tmp_path / "pred"),
        },
        "decoding": {"beam_width": 10, "num_return_sequences": 10},
        "eval": {"bootstrap": 0, "ks": [1, 5, 10], "max_valid_users": 50},
    }
    train = run_train_etegrec(params)
    assert train["unique"] and train["rec_steps"] > 0 and train["tok_steps"] > 0
    assert (tmp_path / "sids" / "tokenizer.pt").exists() and (
        tmp_path / "sids" / "codes.npy"
    ).exists()
    res = run_eval_etegrec(params)
    assert res["invalid_rate"] == 0.0 and 0.0 <= res["test/ndcg@10"] <= 1.0
    saved = json.loads((tmp_path / "metrics" / "eval_etegrec.json").read_text())
    assert saved["test/hr@10"] == res["test/hr@10"]
    bad = {**params, "etegrec": {**params["etegrec"], "cycle": 1}}
    with pytest.raises(ValueError, match="etegrec.cycle"):
        run_train_etegrec(bad)


def test_item_embeddings_stage_writes_each_source(syn_prepared, syn_ds, syn_loo, tmp_path):
    from sidrec_core.models.sasrec import SASRecConfig, build_sasrec
    from sidrec_core.stages.item_embeddings import run as run_item_embeddings

    sasrec = {"hidden_dim": 16, "checkpoint": str(tmp_path / "sasrec" / "model.pt")}
    model = build_sasrec(build(SASRecConfig, sasrec, "sasrec"), syn_loo)
    save_torch(sasrec["checkpoint"], model.state_dict())
    save_npy(syn_prepared["embed"]["output"], synthetic_embeddings(syn_ds))
    params = {**syn_prepared, "sasrec": sasrec, "collab": {"output": str(tmp_path / "items")}}
    out = run_item_embeddings(params)
    collab = np.load(tmp_path / "items" / "collaborative.npy")
    both = np.load(tmp_path / "items" / "both.npy")
    table = model.item_emb.weight.detach().numpy()
    assert np.allclose(collab, table[1:]) and out["both_dim"] == both.shape[1]
    assert both.shape == (syn_ds.num_items, 32 + 16)
