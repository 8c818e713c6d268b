"""scripts/mutation stops a mutant's test run that sleeps (mutmut's own limit counts CPU time only), not a busy one."""

from __future__ import annotations

import subprocess
import time

from hxp_tools.mutation import stop_sleepers

# A title of this test's own: the real "mutmut: " runs of a mutation run on this machine are never touched.
TITLE = "hxp-test-hang: "


def _titled(name: str, *command: str) -> subprocess.Popen[bytes]:
    """A process whose command line, as ps shows it, starts with TITLE + name."""
    return subprocess.Popen(["bash", "-c", f'exec -a "{TITLE}{name}" "$@"', "bash", *command])


def _wait_until_busy_has_worked(pid: int, limit: int) -> None:
    """Until the busy process is older than limit and has used over a tenth of its age on the CPU."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        elapsed, cpu = subprocess.run(["ps", "-o", "etimes=,times=", "-p", str(pid)], capture_output=True, text=True,
                                      check=True).stdout.split()
        if int(elapsed) > limit and int(cpu) * 10 > int(elapsed):
            return
        time.sleep(0.5)
    raise AssertionError("the busy process never got enough CPU in 60 s")


def test_a_run_asleep_past_the_limit_is_killed_and_a_busy_one_is_left_alone() -> None:
    sleeper = _titled("sleeper", "sleep", "300")
    busy = _titled("busy", "python3", "-c", "while True: pass")
    try:
        _wait_until_busy_has_worked(busy.pid, limit=2)
        stopped = stop_sleepers(TITLE, hang_seconds=2)
        assert [title.split()[1] for title, _, _ in stopped] == ["sleeper"]
        assert sleeper.wait(timeout=10) == -9  # SIGKILL, which mutmut reports as "segfault" (killed)
        assert busy.poll() is None
        assert stop_sleepers(TITLE, hang_seconds=300) == []  # nothing this old yet
    finally:
        for process in (sleeper, busy):
            process.kill()
            process.wait()
