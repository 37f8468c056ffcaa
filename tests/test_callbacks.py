"""fit's callbacks and the early-stopping state fit and GRPO share."""

from __future__ import annotations

import pytest
import torch

from sidrec_core.callbacks import Callback, EarlyStopping
from sidrec_core.train import TrainConfig, fit


class _Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def loss(self, batch):
        return ((self.w - batch["y"]) ** 2).mean()


class _Calls(Callback):
    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def on_train_epoch_end(self, epoch, record):
        self.calls.append(("train", epoch))
        record["extra"] = float(epoch)

    def on_validation_end(self, epoch, record):
        self.calls.append(("valid", epoch))
        assert record["extra"] == float(epoch)  # added before validation, seen after it

    def on_epoch_end(self, epoch, record):
        self.calls.append(("end", epoch))


def _fit(values, callbacks=(), **train):
    """fit a one-parameter model whose validation returns ``values`` in turn."""
    model, it = _Line(), iter(values)
    cfg = TrainConfig(epochs=len(values), lr=0.1, grad_clip=0, monitor="valid/x", **train)
    batches = lambda epoch: [{"y": torch.ones(1)}]  # noqa: E731
    validate = lambda: {"valid/x": next(it)}  # noqa: E731
    result = fit(model, batches, validate, cfg, device=torch.device("cpu"), callbacks=callbacks)
    return result, model


def test_hooks_run_in_order_and_only_validations_reach_on_validation_end():
    calls = _Calls()
    result, _ = _fit([0.1, 0.2, 0.3, 0.4], callbacks=[calls], eval_every=2)
    assert calls.calls == [
        ("train", 1), ("end", 1),
        ("train", 2), ("valid", 2), ("end", 2),
        ("train", 3), ("end", 3),
        ("train", 4), ("valid", 4), ("end", 4),
    ]  # fmt: skip
    assert [row["extra"] for row in result.history] == [1.0, 2.0, 3.0, 4.0]


def test_patience_stops_and_the_best_epoch_state_is_restored():
    result, model = _fit([0.5, 0.9, 0.4, 0.3, 0.95], patience=2)
    assert (result.best_epoch, result.best_metric, result.epochs) == (2, 0.9, 4)
    # the weight after epoch 2's step (one AdamW step an epoch toward y = 1), not after epoch 4's
    _, twice = _fit([0.5, 0.9], patience=0)
    assert model.w.item() == pytest.approx(twice.w.item())
    assert model.w.item() < _fit([0.1, 0.2, 0.3, 0.4])[1].w.item()


def test_a_raising_callback_stops_training():
    class Stop(Exception):
        pass

    class StopAt2(Callback):
        def on_validation_end(self, epoch, record):
            if epoch == 2:
                raise Stop

    calls = _Calls()
    with pytest.raises(Stop):
        _fit([0.1, 0.2, 0.3], callbacks=[StopAt2(), calls])
    assert ("end", 2) not in calls.calls and ("train", 3) not in calls.calls


def test_early_stopping_state_round_trips_and_names_a_missing_monitor():
    model = _Line()
    early = EarlyStopping("valid/x", patience=1)
    assert early.update(1, {"valid/x": 0.3}, model) and not early.stop
    model.w.data.fill_(5.0)
    assert not early.update(2, {"valid/x": 0.2}, model) and early.stop
    copy = EarlyStopping("valid/x", patience=1)
    copy.load_state_dict(early.state_dict())
    assert (copy.best, copy.best_epoch, copy.bad_evals) == (0.3, 1, 1)
    copy.restore(model)
    assert model.w.item() == 0.0  # the epoch-1 state, not the later 5.0
    with pytest.raises(KeyError, match="valid/x"):
        early.update(3, {"valid/y": 1.0}, model)
