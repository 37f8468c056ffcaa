"""Files that cannot be read back and folders that cannot be written: one line naming the file
and what to do, never a traceback. Root ignores chmod, so a read-only or full folder is
simulated where the write fails (an ``OSError`` with the errno the kernel would give)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sidrec_core.cli import main as stage_main
from sidrec_core.config import build
from sidrec_core.io import ArtifactError, atomic_path
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec, load_sasrec
from sidrec_core.models.sid_vocab import SIDVocab
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.prepare import run as run_prepare

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved SID table and a tiny saved SID LM trained on nothing (only its files matter)."""
    root = tmp_path_factory.mktemp("saved")
    i = np.arange(40)
    codes = np.vstack([-np.ones((1, 3), np.int64), np.stack([i % 4, (i // 4) % 4, i // 16], 1)])
    table = SIDTable(codes, (4, 4, 4))
    table.save(root / "sids")
    torch.manual_seed(0)
    cfg = SIDLMConfig(intermediate_size=64, **TINY)
    vocab = SIDVocab.build(table.codebook_sizes, None)
    SIDLM(build_lm(cfg, vocab), vocab, table, cfg, max_history=5).save(root / "sidlm")
    return root, table, cfg


@pytest.mark.parametrize(
    ("name", "remedy"),
    [
        ("sidlm/model.safetensors", "dvc repro train_sidlm"),
        ("sidlm/sidlm_meta.json", "dvc repro train_sidlm"),
        ("sidlm/sid_vocab.json", "dvc repro train_sidlm"),
        ("sids/codes.npy", "dvc repro build_sids"),
        ("sids/meta.json", "dvc repro build_sids"),
    ],
)
def test_truncated_artifact_is_named(saved, tmp_path, name, remedy):
    root, table, cfg = saved
    for folder in ("sids", "sidlm"):
        (tmp_path / folder).mkdir()
        for f in (root / folder).iterdir():
            (tmp_path / folder / f.name).write_bytes(f.read_bytes())
    SIDLM.load(tmp_path / "sidlm", SIDTable.load(tmp_path / "sids"), cfg, 5)  # intact: loads
    _truncate(tmp_path / name)
    with pytest.raises(ArtifactError) as exc:
        SIDLM.load(tmp_path / "sidlm", SIDTable.load(tmp_path / "sids"), cfg, 5)
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / name}: corrupt or truncated (") and remedy in msg
    assert "\n" not in msg


def test_truncated_sasrec_checkpoint_is_named(syn_loo, tmp_path):
    cfg = build(SASRecConfig, {"hidden_dim": 8}, "sasrec")
    path = tmp_path / "model.pt"
    torch.save(build_sasrec(cfg, syn_loo).state_dict(), path)
    assert load_sasrec(cfg, syn_loo, path, "sasrec.checkpoint") is not None
    wider = build(SASRecConfig, {"hidden_dim": 16}, "sasrec")
    with pytest.raises(ValueError, match=r"sasrec.checkpoint: .*model.pt does not match the sasr"):
        load_sasrec(wider, syn_loo, path, "sasrec.checkpoint")
    _truncate(path)
    with pytest.raises(ArtifactError, match=r"model.pt: corrupt or truncated .*train_sasrec"):
        load_sasrec(cfg, syn_loo, path, "sasrec.checkpoint")


def _prepare_argv(tmp_path: Path, prepared: Path) -> list[str]:
    return [
        "--set",
        "data.name=synthetic",
        "--set",
        "data.synthetic_users=30",
        "--set",
        f"data.prepared_dir={prepared}",
        "--set",
        f"base.metrics_dir={tmp_path / 'm'}",
        "--params",
        str(tmp_path / "none.yaml"),
    ]


@pytest.mark.parametrize("errno_code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch, errno_code):
    (tmp_path / "none.yaml").write_text("{}\n")
    prepared = tmp_path / "prep"

    def refuse(*args, **kwargs):  # what np.savez meets in a read-only or full folder
        raise OSError(errno_code, os.strerror(errno_code))

    monkeypatch.setattr(np, "savez", refuse)
    assert stage_main(run_prepare, "prepare", _prepare_argv(tmp_path, prepared)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    # a full disk names no file: the artifact being written is named instead
    assert err.startswith(f"error: {prepared / 'dataset.npz'}: {os.strerror(errno_code)}")
    assert not any(p.name.endswith(".tmp") for p in prepared.iterdir())


def test_output_folder_under_a_file_is_one_line(tmp_path, capsys):
    # a folder that cannot be made, for real (root included): its parent is a file
    (tmp_path / "none.yaml").write_text("{}\n")
    (tmp_path / "blocker").write_text("")
    argv = _prepare_argv(tmp_path, tmp_path / "blocker" / "prep")
    assert stage_main(run_prepare, "prepare", argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'blocker' / 'prep'}: Not a directory\n"


def test_oserror_without_a_file_is_given_the_artifact(tmp_path):
    with pytest.raises(OSError) as exc, atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert exc.value.filename == str(tmp_path / "out.bin") and exc.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["ablate", "tune"])
def test_unwritable_out_folder_of_studies_is_one_line(tmp_path, capsys, script):
    from bench import ablate as ablate_cli

    (tmp_path / "blocker").write_text("")  # --out below a file cannot be created
    out = str(tmp_path / "blocker" / "exp")
    if script == "ablate":
        rc = ablate_cli.main(["--study", "exclude_seen", "--profile", "smoke", "--out", out])
    else:
        import importlib.util

        path = Path(__file__).resolve().parents[1] / "bench" / "tune.py"
        spec = importlib.util.spec_from_file_location("tune_cli", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rc = mod.main(["--model", "sasrec", "--profile", "smoke", "--out", out])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'blocker'}") and "Not a directory" in err


@pytest.mark.parametrize(
    "script, bad",
    [
        ("rpg_train_perf", ["--set", "rpg.mhl.ratio=2"]),
        ("rpg_train_perf", ["--mhl-phases", "entropy"]),
        ("rpg_decoding", ["--set", "rpg.bogus=1"]),
        ("sidlm_decoding", ["--set", "sidlm.bogus=1"]),
        ("sasrec_perf", ["--set", "sasrec.bogus=1"]),
        ("sasrec_valid_cost", ["--params", "missing.yaml"]),
    ],
)
def test_perf_bench_bad_params_are_one_usage_line(tmp_path, capsys, monkeypatch, script, bad):
    import runpy

    root = Path(__file__).resolve().parents[1]
    path = root / "bench" / "perf" / f"{script}.py"
    params = [] if "--params" in bad else ["--params", str(root / "params.yaml")]
    monkeypatch.chdir(tmp_path)  # nothing is written: the error comes before any output
    argv = [str(path), *params, *bad, "--out", str(tmp_path / "out.json")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(path), run_name="__main__")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "".join(err)
    expected = {
        "rpg_train_perf": "rpg.mhl" if "--set" in bad else "set rpg.mhl.granularity",
        "rpg_decoding": "unknown key(s) rpg.bogus",
        "sidlm_decoding": "unknown key(s) sidlm.bogus",
        "sasrec_perf": "unknown key(s) sasrec.bogus",
        "sasrec_valid_cost": "missing.yaml",
    }[script]
    assert err[-1].startswith(f"{path.name}: error: ") and expected in err[-1]
    assert list(tmp_path.iterdir()) == []
