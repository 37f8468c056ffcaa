"""Where studies are stored: an Optuna journal per study, ``<out>/<study>/optuna.jsonl`` (in git),
or an RDB URL (``--storage``). A journal's file lock hands a queued trial to one worker of this
machine, PostgreSQL's row lock to one worker of many machines, and RDB heartbeats fail a dead
worker's trial; SQLite serves one worker. A missing storage is created only when asked, so a
mistyped path fails instead of starting an empty study."""

from __future__ import annotations

import datetime
import functools
import logging
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from sidrec_core.lifecycle import HOST_TAG, PID_TAG, START_TAG, pid_alive, process_tags

log = logging.getLogger(__name__)
JOURNAL = "optuna.jsonl"
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30  # a killed worker's trial is retried after ~30 s
WORKER = "worker"  # trial user attr: host:pid:start of the process that ran it
UNCLAIMED_AFTER = 10.0  # seconds: a live worker tags its trial milliseconds after Optuna starts it
EXPECTED = "expected an RDB URL (sqlite:///PATH, postgresql://USER@HOST/DB) or a journal path"
# the package of each driver SQLAlchemy may import (``postgresql://`` is psycopg 3)
DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL"}


def study_journal(out_dir: Path, study: str) -> str:
    return str(Path(out_dir).resolve() / study / JOURNAL)


def exists(location: str, flag: str = "--storage") -> bool:
    """Whether the storage is there: a journal or SQLite file that exists, or a server."""
    if "://" not in location:
        return Path(location).is_file()
    try:
        url = sqlalchemy.engine.make_url(location)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ValueError(f"{flag} {location!r}: not a storage URL; {EXPECTED}") from None
    return url.get_backend_name() != "sqlite" or Path(url.database or "").is_file()


def check_storage(location: str, create: bool = False, flag: str = "--storage") -> None:
    if not exists(location, flag) and not create:
        raise ValueError(f"{flag} {location!r}: no such storage ({EXPECTED}); add --new-storage")


def is_journal(location: str) -> bool:
    """A journal file (a path), not a database URL. Only the processes of one machine write a
    journal: machines share a study through a database server, and a committed journal reaches
    the next machine through git, after the workers that wrote it have stopped."""
    return "://" not in location


def make_storage(location: str, create: bool = False, flag: str = "--storage") -> BaseStorage:
    """The storage at ``location``; errors are one-line ValueErrors naming ``flag``."""
    check_storage(location, create, flag)
    if not exists(location):
        log.info("new study storage: %s", location)
    if is_journal(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(location))
    url = sqlalchemy.engine.make_url(location)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            return RDBStorage(
                location,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
        except ImportError as exc:  # Optuna's, raised from the driver's ModuleNotFoundError
            missing = str(getattr(exc.__cause__, "name", None) or url.get_driver_name())
            why = f"its driver is not installed (pip install {DRIVERS.get(missing, missing)})"
        except sqlalchemy.exc.ArgumentError:  # a dialect SQLAlchemy does not know
            why = f"not a storage URL; {EXPECTED}"
        except sqlalchemy.exc.DBAPIError as exc:
            # another launch may be creating the schema or hold the lock: wait and retry
            why = f"cannot open the database: {str(exc.orig).strip().splitlines()[0]}"
            if attempt < 2:
                time.sleep(1.0 + attempt)
                continue
        raise ValueError(f"{flag} {location!r}: {why}")
    raise AssertionError("unreachable")


def load_or_create(
    storage: BaseStorage, name: str, direction: str, sampler: optuna.samplers.BaseSampler
) -> optuna.Study:
    """Study ``name``, created when missing (``load_if_exists`` alone would append a record of
    the attempt to a journal on every launch)."""
    if name in optuna.get_all_study_names(storage):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return optuna.create_study(
        storage=storage, study_name=name, direction=direction, sampler=sampler, load_if_exists=True
    )


@functools.lru_cache(maxsize=64)
def read_storage(location: str) -> BaseStorage:
    """The existing storage at ``location``, one object per process (a journal is read once)."""
    return make_storage(location)


def sections(location: str, study: str) -> list[tuple[str, optuna.Study]]:
    """(profile, Optuna study) of every ``<study>-<profile>`` in the storage, in its order."""
    if not exists(location):
        return []
    storage, prefix = read_storage(location), f"{study}-"
    return [
        (name.removeprefix(prefix), optuna.load_study(study_name=name, storage=storage))
        for name in optuna.get_all_study_names(storage)
        if name.startswith(prefix)
    ]


def worker_id() -> str:
    """This process as a trial's ``worker``: ``host:pid:start`` (start tells a reused pid apart)."""
    tags = process_tags()
    return f"{tags[HOST_TAG]}:{tags[PID_TAG]}:{tags.get(START_TAG, '')}"


def _unclaimed_age(t: optuna.trial.FrozenTrial, now: datetime.datetime) -> float | None:
    """Seconds since an untagged RUNNING trial started; None for a tagged one."""
    if WORKER in t.user_attrs:
        return None
    return (now - (t.datetime_start or now)).total_seconds()


def fail_dead_trials(ostudy: optuna.Study, journal: bool = False) -> int:
    """Fail the RUNNING trials whose worker process on this host is gone, those no worker tagged
    within :data:`UNCLAIMED_AFTER` seconds of their start (a worker killed between Optuna's ask
    and the objective's first line; a younger one is waited for), on a ``journal`` those another
    host's worker left (it wrote the file elsewhere and stopped before the file came here, see
    :func:`is_journal`; left RUNNING, its grid point would never be queued again), and on an RDB
    storage those whose heartbeat stopped. Returns how many were failed here (not by heartbeat)."""
    optuna.storages.fail_stale_trials(ostudy)
    running = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ages = [a for t in running if (a := _unclaimed_age(t, datetime.datetime.now())) is not None]
    if ages and min(ages) <= UNCLAIMED_AFTER:
        time.sleep(UNCLAIMED_AFTER - min(ages) + 0.5)
    failed = 0
    now = datetime.datetime.now()
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, rest = str(t.user_attrs.get(WORKER, "")).partition(":")
        pid, _, start = rest.partition(":")
        age = _unclaimed_age(t, now)
        here = host == process_tags()[HOST_TAG]
        dead_here = here and pid.isdigit() and not pid_alive(int(pid), start or None)
        left_elsewhere = journal and bool(host) and not here
        if dead_here or left_elsewhere or (age is not None and age > UNCLAIMED_AFTER):
            ostudy.tell(t.number, state=TrialState.FAIL)
            failed += 1
    return failed
