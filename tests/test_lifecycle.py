"""Process lifecycle: owner records, liveness of a recorded owner, SIGTERM as an exception."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from sidrec_core.lifecycle import HOST_TAG, PID_TAG, START_TAG, orphaned, process_tags


def test_only_a_gone_owner_on_this_host_is_orphaned():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    me = process_tags()
    assert me[PID_TAG] == str(os.getpid()) and me[HOST_TAG] == host
    assert orphaned({PID_TAG: str(dead.pid), HOST_TAG: host})
    assert not orphaned(me)
    assert orphaned({**me, START_TAG: "1"})  # this pid, but another process's start time
    assert not orphaned({PID_TAG: str(dead.pid), HOST_TAG: host + "-other"})
    assert not orphaned({HOST_TAG: host})


SWALLOWING_CHILD = """
import sys, time
from sidrec_core.lifecycle import Terminated, install_sigterm_handler
assert install_sigterm_handler()
open(sys.argv[1], "w").write("ready")
while True:
    try:
        time.sleep(120)
    except Terminated:  # as Python does with an exception raised inside a finaliser
        open(sys.argv[1], "w").write("swallowed")
"""


def test_a_second_sigterm_kills_a_process_that_swallowed_the_first(tmp_path):
    import signal
    import time

    flag = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", SWALLOWING_CHILD, str(flag)], env=env)
    try:
        for state in ("ready", "swallowed"):
            deadline = time.time() + 60
            while not (flag.exists() and flag.read_text() == state) and time.time() < deadline:
                assert child.poll() is None, "child exited early"
                time.sleep(0.1)
            child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
    finally:
        child.kill()
