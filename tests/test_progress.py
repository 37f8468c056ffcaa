"""Progress lines of long user loops and silenced import noise."""

import logging
import warnings

import numpy as np

from sidrec_core.progress import Progress, format_seconds


def test_progress_logs_done_rate_and_eta_at_intervals(caplog):
    now = [0.0]
    p = Progress(1000, "test SIDLM", every_seconds=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="sidrec_core.progress"):
        for _ in range(9):  # 100 users every 10 s
            now[0] += 10
            p.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "test SIDLM: 300/1000 users (30%), 10.0 users/s, ETA 1m10s",
        "test SIDLM: 600/1000 users (60%), 10.0 users/s, ETA 40s",
        "test SIDLM: 900/1000 users (90%), 10.0 users/s, ETA 10s",
    ]
    assert format_seconds(3725) == "1h02m05s"


def test_evaluate_reports_progress(syn_loo, caplog):
    from sidrec_core.evaluate import EvalConfig, evaluate
    from sidrec_core.models.baselines import MostPop

    split = syn_loo.split("test", 10)
    model = MostPop(syn_loo)
    with caplog.at_level(logging.INFO, logger="sidrec_core.progress"):
        evaluate(model, split, EvalConfig(batch_size=16), progress_every=1e-9)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs and msgs[0].startswith(f"test MostPop: 16/{len(split)} users")
    assert all("users/s, ETA" in m for m in msgs)
    assert len(np.unique(msgs)) == len(msgs)


def test_import_noise_is_filtered():
    import importlib

    from optuna.exceptions import ExperimentalWarning

    import sidrec_core

    assert logging.getLogger("faiss.loader").getEffectiveLevel() >= logging.WARNING
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(sidrec_core)  # the package's filters go on top of "always"
        msg = "GridSampler is experimental (supported from v9.9.0). x"
        warnings.warn(msg, ExperimentalWarning, stacklevel=1)
        arg = "Argument ``heartbeat_interval`` is an experimental feature. The interface can"
        warnings.warn(arg, ExperimentalWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]


def test_training_eta_counts_the_epochs_left():
    from sidrec_core.train import eta_text

    assert eta_text(20.0, 2, 3) == "10s/epoch, ETA <= 30s"
    assert eta_text(90.0, 1, 0) == "1m30s/epoch, done"
