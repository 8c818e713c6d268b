"""After an engine failure the process exits 4, as documented, even when Python itself cannot run.

The orderly exit (the event loop, then a watchdog thread) needs the GIL. Here the main thread holds it
inside C code (a regular expression that backtracks for minutes, which never releases it), the case
where the last resort must act: it used to be SIGALRM's default action, and the process ended
"killed by signal 14" (-14 here, 142 in a container) instead of exiting 4.
"""

from __future__ import annotations

import subprocess
import sys

from hxp_enterprise_llm.api.app import EXIT_ENGINE_FAILED

STUCK_AFTER_FATAL = """
import re
import uvicorn
from hxp_enterprise_llm import server

# Short clocks for the test; the order is the server's: watchdog thread first, then the last resort.
server.FAILURE_WATCHDOG_SECONDS = 0.5
server.FAILURE_ALARM_SECONDS = 1
draining = server.DrainingServer(uvicorn.Config(app=None), drain_timeout=1.0)
draining.fatal(server.EXIT_ENGINE_FAILED, "engine died (test)")
re.match(r"(a+)+$", "a" * 40 + "b")  # holds the GIL far longer than the test waits
print("the process outlived its backstop", flush=True)
"""


def test_a_process_stuck_holding_the_gil_still_exits_4() -> None:
    result = subprocess.run([sys.executable, "-c", STUCK_AFTER_FATAL], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_ENGINE_FAILED == 4, (result.returncode, result.stderr[-2000:])
    assert "outlived" not in result.stdout
