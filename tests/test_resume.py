"""Resumable training: a run killed after k epochs, re-run, ends as an uninterrupted one."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import Accelerator

from sidrec_core.callbacks import Callback
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.models.sasrec import SASRec, SASRecConfig
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.train import Resume, Step, TrainConfig, fit
from sidrec_core.utils import seed_everything

TRAIN = TrainConfig(epochs=5, batch_size=64, lr=5e-3, schedule="cosine", warmup_steps=3, patience=0)
MODEL = {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_blocks": 1, "max_history": 10}


# Exact equality needs a fixed reduction order: one intra-op thread, as a seeded stage run with
# base.num_threads=1 has.
pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands in for SIGKILL: the process dies between two epochs."""


class _KillAfter(Callback):
    def __init__(self, k: int):
        self.k = k

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        if epoch == self.k:
            raise Killed


def _sasrec_fit(loo, resume=None, fingerprint=None, on_epoch_end=None, train=TRAIN):
    """One fresh 'process': build everything from the seed, as a stage does, then fit."""
    seed_everything(0)
    cfg = SASRecConfig(**MODEL, dropout=0.3, loss="bce", num_negatives=4, train=train)
    model, batches = SASRec(cfg, loo.num_items), make_batches(cfg, loo, seed=0)
    valid = loo.split("valid", cfg.max_history)
    result = fit(
        model,
        batches,
        lambda: evaluate(model, valid, EvalConfig(), num_items=loo.num_items).metrics,
        train,
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
        resume=None if resume is None else Resume(resume, fingerprint, stateful=[batches]),
        callbacks=[] if on_epoch_end is None else [on_epoch_end],
    )
    return result, model.state_dict()


def _same(a, b) -> None:
    (ra, sa), (rb, sb) = a, b

    def exact(history):  # wall-clock figures differ between any two runs
        return [{k: v for k, v in h.items() if "second" not in k} for h in history]

    assert exact(ra.history) == exact(rb.history)
    assert {"train/loss", "train/lr"} <= set(exact(ra.history)[0])
    assert (ra.best_metric, ra.best_epoch, ra.epochs, ra.steps) == (
        rb.best_metric,
        rb.best_epoch,
        rb.epochs,
        rb.steps,
    )
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sasrec_resume_equals_uninterrupted(syn_loo, tmp_path, caplog):
    full = _sasrec_fit(syn_loo)
    ckpt = tmp_path / "state.pt"
    with pytest.raises(Killed):
        _sasrec_fit(syn_loo, resume=ckpt, fingerprint={"seed": 0}, on_epoch_end=_KillAfter(2))
    assert ckpt.is_file()
    with pytest.raises(Killed):  # killed again, later: resumes from the newer checkpoint
        _sasrec_fit(syn_loo, resume=ckpt, fingerprint={"seed": 0}, on_epoch_end=_KillAfter(4))
    with caplog.at_level(logging.INFO):
        resumed = _sasrec_fit(syn_loo, resume=ckpt, fingerprint={"seed": 0})
    assert "resumed from" in caplog.text and "after epoch 4" in caplog.text
    _same(full, resumed)
    assert not ckpt.exists()  # a finished run leaves no resume state behind


def test_other_params_start_fresh(syn_loo, tmp_path, caplog):
    ckpt = tmp_path / "state.pt"
    with pytest.raises(Killed):
        _sasrec_fit(syn_loo, resume=ckpt, fingerprint={"seed": 0}, on_epoch_end=_KillAfter(2))
    with caplog.at_level(logging.INFO):
        fresh = _sasrec_fit(syn_loo, resume=ckpt, fingerprint={"seed": 1})
    assert "other params" in caplog.text and "resumed from" not in caplog.text
    assert [h["epoch"] for h in fresh[0].history] == [1, 2, 3, 4, 5]
    _same(_sasrec_fit(syn_loo), fresh)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
        )

    def forward(self, batch):
        return torch.nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])


def _accelerate_fit(resume=None, on_epoch_end=None):
    """The SID LM's path: Accelerator-prepared model and optimiser, accelerator.backward."""
    seed_everything(0)
    x = torch.randn(96, 4)
    y = x.sum(dim=1)
    model = _Tiny()
    acc = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    prepared, optimizer = acc.prepare(model, optimizer)
    seen = []

    def batches(epoch):
        perm = torch.randperm(96)  # draws from the global torch RNG: restored on resume
        for i in range(0, 96, 32):
            yield {"x": x[perm[i : i + 32]], "y": y[perm[i : i + 32]]}

    def validate():
        seen.append(1)
        with torch.no_grad():
            return {"valid/neg_mse": -float(model(dict(x=x, y=y)))}

    cfg = TrainConfig(epochs=4, lr=1e-2, monitor="valid/neg_mse", schedule="linear", patience=0)
    result = fit(
        model,
        batches,
        validate,
        cfg,
        device=torch.device("cpu"),
        steps_per_epoch=3,
        step=Step(optimizer, loss_fn=prepared, backward=acc.backward),
        resume=None if resume is None else Resume(resume, {"task": "tiny"}),
        callbacks=[] if on_epoch_end is None else [on_epoch_end],
    )
    return result, model.state_dict()


def test_accelerate_resume_equals_uninterrupted(tmp_path):
    full = _accelerate_fit()
    with pytest.raises(Killed):
        _accelerate_fit(resume=tmp_path / "s.pt", on_epoch_end=_KillAfter(1))
    _same(full, _accelerate_fit(resume=tmp_path / "s.pt"))
