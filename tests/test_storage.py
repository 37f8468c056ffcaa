"""Study storage: one-line errors for a bad or missing ``--storage``, no race between two launches
on a fresh storage, and two workers in two working copies sharing a study through a real
PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.ablate import main as ablate_main
from sidrec_core.lifecycle import process_start
from sidrec_core.studies import storage, tuning
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import cell_text, is_cost, summarize_trials
from sidrec_core.studies.runner import StudyOptions
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import trial_level, trial_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import copy_storage  # noqa: E402
import tune as tune_cli  # noqa: E402


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_a_storage_that_is_no_url_and_no_file_fails_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "exp")
    argv = ["--study", "exclude_seen", "--profile", "smoke", "--out", out]
    assert ablate_main([*argv, "--storage", "notaurl"]) == 2
    err = one_line_error(capsys)
    assert "--storage 'notaurl'" in err and "expected an RDB URL" in err
    assert ablate_main([*argv, "--storage", "postgresql://u@host:notaport/db"]) == 2
    assert "not a storage URL" in one_line_error(capsys)
    assert ablate_main([*argv, "--storage", "nodialect://x/y", "--report-only"]) == 2
    assert "not a storage URL" in one_line_error(capsys)
    assert tune_cli.main(["--model", "sasrec", "--storage", "bogus", "--out", out]) == 2
    assert "--storage 'bogus'" in one_line_error(capsys)
    assert not (tmp_path / "exp").exists() and not Path("notaurl").exists()


def test_a_mistyped_storage_path_never_starts_an_empty_study(tmp_path, capsys):
    """A missing journal or SQLite file named by --storage is an error (nothing is created);
    --new-storage creates it; a study's own journal (no --storage) is created when missing."""
    out = str(tmp_path / "exp")
    argv = ["--study", "exclude_seen", "--profile", "smoke", "--out", out, "--report-only"]
    for missing in (tmp_path / "typo.jsonl", f"sqlite:///{tmp_path / 'typo.db'}"):
        assert ablate_main([*argv, "--storage", str(missing)]) == 2
        err = one_line_error(capsys)
        assert "no such storage" in err and "add --new-storage" in err
    assert not list(tmp_path.glob("typo*"))
    journal = str(tmp_path / "new.jsonl")
    assert ablate_main([*argv, "--storage", journal, "--new-storage"]) == 0  # accepted
    with pytest.raises(ValueError, match="no such storage"):
        StudyOptions(storage=journal).open_storage(journal)
    StudyOptions(storage=journal, new_storage=True).open_storage(journal)
    assert Path(journal).is_file()
    own = StudyOptions(out_dir=out).storage_url_for("exclude_seen")  # no --storage
    StudyOptions(out_dir=out).open_storage(own)
    assert own == str(tmp_path / "exp" / "exclude_seen" / "optuna.jsonl") and Path(own).is_file()


def test_a_postgresql_url_without_its_driver_names_the_package(monkeypatch, capsys):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it fails
    url = "postgresql://user@127.0.0.1:1/optuna"  # SQLAlchemy's default driver: psycopg 3
    with pytest.raises(ValueError, match=r"pip install psycopg\[binary\]"):
        make_storage(url)
    assert ablate_main(["--study", "exclude_seen", "--storage", url, "--report-only"]) == 2
    assert "psycopg[binary]" in one_line_error(capsys)
    old = "postgresql+psycopg2://user@127.0.0.1:1/optuna"
    with pytest.raises(ValueError, match="pip install psycopg2-binary"):
        make_storage(old)


def test_several_sqlite_workers_are_refused(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    argv = ["--study", "exclude_seen", "--storage", url, "--new-storage", "--workers", "2"]
    assert ablate_main(argv) == 2
    assert "SQLite can hand one queued trial to two workers" in one_line_error(capsys)


def test_copy_storage_keeps_every_trial_field_and_turns_retrains_into_trials(tmp_path):
    """``bench/copy_storage.py``: SQLite -> journal with trial numbers, states, params, values,
    intermediate values, datetimes and attributes kept; a search's retrain attributes become
    trials of its ``-retrain`` study that read back as the same {seed: figures}."""
    src = f"sqlite:///{tmp_path / 'old.db'}"
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    search = optuna.create_study(study_name="tune-m-beauty", storage=src, direction="maximize")
    search.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.01},
            distributions={"lr": lr},
            value=0.5,
            intermediate_values={1: 0.3, 2: 0.5},
            user_attrs={"test/ndcg@10": 0.4},
        )
    )
    search.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    figures_ = {"1": {"valid/ndcg@10": 0.51}, "0": {"valid/ndcg@10": 0.49}}
    search.set_user_attr("retrain", figures_)
    search.set_user_attr("retrain_params", {"lr": 0.01})
    search.set_user_attr("retrain_claim_s0", {})
    search.set_user_attr("dataset", "beauty")
    dst = str(tmp_path / "new.jsonl")
    assert copy_storage.main([src, dst]) == 0
    new = optuna.load_study(study_name="tune-m-beauty", storage=make_storage(dst))
    for a, b in zip(search.get_trials(), new.get_trials(), strict=True):
        assert all(getattr(a, f) == getattr(b, f) for f in copy_storage.FIELDS)
    assert new.user_attrs == {"dataset": "beauty"}  # retrains moved, claims dropped
    retrains = optuna.load_study(study_name="tune-m-beauty-retrain", storage=make_storage(dst))
    assert tuning.retrained(retrains, "best", {"lr": 0.01}) == figures_  # order kept
    assert tuning.retrained(retrains, "default", {}) == {}


CREATOR = """
import sys, time, optuna
from sidrec_core.studies.storage import make_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
while time.time() < float(sys.argv[2]):
    pass
storage = make_storage(sys.argv[1], create=True)
optuna.create_study(study_name="fresh", storage=storage, load_if_exists=True)
print(len(optuna.get_all_study_names(storage)))
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_launches_on_a_fresh_storage_do_not_race(tmp_path, kind):
    """Two processes creating one fresh storage and study at the same moment both succeed (on
    SQLite the second can lose the race to create Optuna's schema: IntegrityError, retried)."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else str(tmp_path / "f.jsonl")
    start = str(time.time() + 6)  # both processes are up and spinning by then
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, url, start],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["1", "1"]


# --- many machines: a real PostgreSQL server, two working copies ------------------------------


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's package or on PATH), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port (run as user ``postgres`` when the
    tests run as root, which ``initdb`` refuses); yields the URL of an empty database."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server programs not installed (apt-get install postgresql)")
    psycopg = pytest.importorskip("psycopg", reason="psycopg[binary] not installed (dev extra)")

    root = Path(tempfile.mkdtemp(prefix="sidrec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    try:
        server = {"host": "127.0.0.1", "port": port, "user": "postgres"}
        with psycopg.connect(**server, dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def working_copy(dest: Path) -> Path:
    """The repository's files as they are in this working tree, ignored ones left out (another
    machine's checkout of the same code)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    # a git checkout, as a machine has: trials run DVC in git worktrees of it
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(["git", *cmd], cwd=dest, env=GIT_ENV, check=True, capture_output=True)
    return dest


def figures(ostudy: optuna.Study) -> dict[tuple[str, str], str]:
    """The report's quality cells of the study (cost cells measure the machine, not the run)."""
    cols, table = summarize_trials(STUDIES["exclude_seen"], ostudy.get_trials())
    return {(lv, c): cell_text(table[lv][c], c) for lv in table for c in cols if not is_cost(c)}


@pytest.mark.slow
def test_two_machines_share_a_study_through_postgresql(tmp_path, postgres_url):
    """Two workers, each in its own working copy with its own output folder (as two machines
    would), launched together on one smoke study in PostgreSQL: every grid point runs once,
    none is lost, and the figures equal those of a one-worker run."""
    argv = ["--study", "exclude_seen", "--profile", "smoke", "--n-seeds", "3"]
    env = {**os.environ, "SIDREC_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    env.pop("SIDREC_DVC_CACHE")  # each machine has its own DVC cache
    procs = []
    for name in ("a", "b"):
        copy = working_copy(tmp_path / name)
        cmd = [sys.executable, "bench/ablate.py", *argv, "--storage", postgres_url]
        cmd += ["--out", str(copy / "out")]
        procs.append(
            subprocess.Popen(
                cmd, cwd=copy, env={**env, "PYTHONPATH": str(copy)}, stderr=subprocess.PIPE
            )
        )
    errs = [p.communicate(timeout=900)[1].decode()[-3000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    shared = optuna.load_study(study_name="exclude_seen-smoke", storage=make_storage(postgres_url))
    trials = shared.get_trials()
    done = sorted((trial_level(t), trial_seed(t)) for t in trials if t.state == TrialState.COMPLETE)
    assert done == [(lv, s) for lv in ("off", "on") for s in (0, 1, 2)]  # each once, none lost
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    alone = tmp_path / "alone"
    assert ablate_main([*argv, "--out", str(alone)]) == 0
    single = optuna.load_study(
        study_name="exclude_seen-smoke",
        storage=make_storage(str(alone / "exclude_seen" / "optuna.jsonl")),
    )
    assert figures(shared) == figures(single) and len(figures(single)) >= 4


def test_an_untagged_running_trial_is_failed_once_no_live_worker_could_still_tag_it(
    tmp_path, monkeypatch
):
    """A worker killed between Optuna's ask and its first line leaves a RUNNING trial with no
    worker tag; the next launch waits out the tagging window, then fails it (and only it)."""
    monkeypatch.setattr(storage, "UNCLAIMED_AFTER", 0.3)  # seconds
    journal = storage.make_storage(str(tmp_path / "j.jsonl"), create=True)
    study = optuna.create_study(storage=journal)
    orphan = study.ask()
    live = study.ask()
    me = os.getpid()
    live.set_user_attr(storage.WORKER, f"{socket.gethostname()}:{me}:{process_start(me)}")
    assert storage.fail_dead_trials(study) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: TrialState.FAIL, live.number: TrialState.RUNNING}


def test_a_trial_another_machine_left_running_in_a_journal_is_failed_and_queued_again(tmp_path):
    """A committed journal reaches a fresh machine with the trial its last session's worker was
    running when that session stopped; left RUNNING, the grid point would never run again. On a
    database server another host's trial may be live: there its heartbeat decides."""
    journal = storage.make_storage(str(tmp_path / "j.jsonl"), create=True)
    study = optuna.create_study(storage=journal)
    elsewhere = study.ask()
    elsewhere.set_user_attr(storage.WORKER, "another-machine:4242:1.0")
    me = os.getpid()
    live = study.ask()
    live.set_user_attr(storage.WORKER, f"{socket.gethostname()}:{me}:{process_start(me)}")
    assert storage.fail_dead_trials(study) == 0  # not known to be a journal: left alone
    assert storage.fail_dead_trials(study, journal=True) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {elsewhere.number: TrialState.FAIL, live.number: TrialState.RUNNING}
    assert storage.is_journal(str(tmp_path / "j.jsonl"))
    assert not storage.is_journal("postgresql://u@h/db")
