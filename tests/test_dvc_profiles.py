"""Profiles through DVC: ``dvc exp run $(python bench/ablate.py --profile P --dvc-args)`` runs
the whole pipeline on the smoke profile, and no profile points a key at a stage's own output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidrec_core.config import flatten, load_params
from sidrec_core.stages.report import headline
from sidrec_core.studies.pipeline import load_pipeline
from sidrec_core.studies.profiles import PROFILES_DIR, dvc_set_args

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("sidrec_core", "bench", "experiments/profiles", ".dvc", "data/datasets")
FILES = ("dvc.yaml", "params.yaml", "studies.yaml", ".dvcignore", ".gitignore")


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_no_profile_reads_a_pipeline_output(profile):
    outs = [o for s in load_pipeline().values() for o in s.outs]
    for key, value in flatten(load_params(PROFILES_DIR / f"{profile}.yaml")).items():
        if isinstance(value, str):
            assert not any(value == o or value.startswith(o + "/") for o in outs), (key, value)
    args = dvc_set_args(profile)
    assert args[::2] == ["-S"] * (len(args) // 2)
    assert all(a.startswith("++") for a in args[1::2]) and f"++base.profile={profile}" in args


@pytest.mark.slow  # spawns DVC: the whole smoke pipeline, ~1 min
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
    assert (repo / "experiments" / "pipeline_report.md").exists()
    for stage in load_pipeline():
        if stage != "report":
            assert (repo / "metrics" / f"{stage}.json").exists(), stage
    # the report's headline is the one DVC metrics file: a readable `dvc metrics show`
    shown = subprocess.run(
        [str(dvc), "metrics", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    (workspace,) = json.loads(shown.stdout).values()
    # every stage's metrics file is a DVC metric (git-tracked, cache: false): the run-cache applies
    assert {f"metrics/{st}.json" for st in ("prepare", "eval_sidlm", "report")} <= set(
        workspace["data"]
    )
    first = (repo / "metrics" / "eval_sidlm.json").read_bytes()

    def exp_run(*extra: str) -> str:
        done = subprocess.run(
            [str(dvc), "exp", "run", *args, *extra],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    for extra in (["-S", "decoding.beam_width=3"], []):
        again = exp_run(*extra, "eval_sidlm")
    # back at the first run's params, eval_sidlm is restored from DVC's run-cache, not re-run
    assert "Stage 'eval_sidlm' is cached - skipping run" in again
    assert (repo / "metrics" / "eval_sidlm.json").read_bytes() == first
    # RPG's decoding is eval_rpg's alone: the graph beam re-scores the trained model
    graph = exp_run("-S", "rpg.decoding.strategy=graph", "eval_rpg")
    assert "Running stage 'eval_rpg'" in graph and "Running stage 'train_rpg'" not in graph
    headline = json.loads((repo / "metrics" / "report.json").read_text())
    assert (headline["dataset"], headline["profile"]) == ("synthetic", "smoke")
    assert 0.0 <= headline["eval_sidlm/test/ndcg@10"] <= headline["eval_sidlm/test/hr@10"] <= 1.0
    assert headline["train_sasrec/wall_seconds"] > 0 and "build_sids/gini" in headline


def test_pipeline_headline_keys_rows_sids_and_walls():
    rows = [
        {"model": "MostPop", "file": "baselines.json", "test/hr@10": 0.01, "test/ndcg@10": 0.005},
        {"model": "SID LM", "file": "eval_sidlm.json", "test/hr@5": 0.03, "test/ndcg@5": "n/a"},
    ]
    out = headline(rows, {"gini": 0.1, "utilization": [1.0]}, {"eval_sidlm": 12.5})
    assert out == {
        "mostpop/test/hr@10": 0.01,
        "mostpop/test/ndcg@10": 0.005,
        "eval_sidlm/test/hr@5": 0.03,
        "build_sids/gini": 0.1,
        "eval_sidlm/wall_seconds": 12.5,
    }
