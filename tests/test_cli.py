"""Stage scripts: --params / --set, clear one-line errors, exit codes."""

import json

from sidrec_core.cli import main
from sidrec_core.stages.prepare import run as run_prepare


def test_stage_cli_with_overrides(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("data:\n  name: synthetic\n  synthetic_users: 30\n")
    rc = main(
        run_prepare,
        "prepare",
        [
            "--params",
            str(params),
            "--set",
            f"data.prepared_dir={tmp_path}/prep",
            "--set",
            f"base.metrics_dir={tmp_path}/m",
        ],
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_users"] == 30 and out["synthetic"] is True
    assert (tmp_path / "prep" / "dataset.npz").exists()


def test_stage_cli_bad_input_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SIDREC_DATA_DIR", str(tmp_path))
    rc = main(run_prepare, "prepare", ["--params", str(tmp_path / "none.yaml")])
    assert rc == 2 and "params file not found" in capsys.readouterr().err
    p = tmp_path / "p.yaml"
    p.write_text("data:\n  nme: beauty\n")
    assert main(run_prepare, "prepare", ["--params", str(p)]) == 2
    assert "unknown key(s) data.nme" in capsys.readouterr().err
    p.write_text("data:\n  name: beauty\n")
    assert main(run_prepare, "prepare", ["--params", str(p), "--set", "data.name=nope"]) == 2
    assert "dataset 'nope' not found" in capsys.readouterr().err
