"""Profiles through DVC: ``dvc exp run $(python bench/ablate.py --profile P --dvc-args)`` runs
the whole pipeline on the smoke profile, and no profile points a key at a stage's own output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidrec_core.config import flatten, load_params
from sidrec_core.studies.pipeline import load_pipeline
from sidrec_core.studies.profiles import PROFILES_DIR, dvc_set_args

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("sidrec_core", "bench", "experiments/profiles", ".dvc", "data/datasets")
FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_no_profile_reads_a_pipeline_output(profile):
    outs = [o for s in load_pipeline().values() for o in s.outs]
    for key, value in flatten(load_params(PROFILES_DIR / f"{profile}.yaml")).items():
        if isinstance(value, str):
            assert not any(value == o or value.startswith(o + "/") for o in outs), (key, value)
    args = dvc_set_args(profile)
    assert args[::2] == ["-S"] * (len(args) // 2)
    assert all(a.startswith("++") for a in args[1::2]) and f"++base.profile={profile}" in args


def test_smoke_profile_runs_through_dvc_exp_run(tmp_path):
    dvc = Path(sys.executable).with_name("dvc")
    assert dvc.exists(), f"dvc (a dependency in pyproject.toml) is missing next to {sys.executable}"
    repo = tmp_path / "repo"
    for folder in COPIED:
        ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache")
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    for name in FILES:
        shutil.copy(ROOT / name, repo / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "SIDREC_TRACKING": "0",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    args = subprocess.run(
        [sys.executable, "bench/ablate.py", "--profile", "smoke", "--dvc-args"],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    run = subprocess.run(
        [str(dvc), "exp", "run", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = (repo / "experiments" / "pipeline_report.md").read_text()
    assert "Profile `smoke`, dataset `synthetic`" in report
    for stage in load_pipeline():
        if stage != "report":
            assert (repo / "metrics" / f"{stage}.json").exists(), stage
