"""`engine_nice`: vLLM's engine processes run below the API process, every thread of them, and a priority is only
ever lowered. Run in a process of its own standing in for the API process, so that the test runner's own children
are left alone; its child is a real process with a second thread, as vLLM's engine core has."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

API_PROCESS = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from hxp_enterprise_llm.services.core.cpu_budget import lower_engine_priority

    CHILD = ("import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
             "print(flush=True); time.sleep(60)")
    engine = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    lowest = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    for child in (engine, lowest):
        child.stdout.readline()  # its second thread is running
    for tid in os.listdir(f"/proc/{lowest.pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), 15)
    reached = lower_engine_priority(int(sys.argv[1]))

    def nices(pid):
        return sorted(os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task"))

    print(json.dumps({"reached": sorted(reached) == sorted([engine.pid, lowest.pid]), "api": nices(os.getpid()),
                      "engine": nices(engine.pid), "lowest": nices(lowest.pid)}))
    for child in (engine, lowest):
        child.kill()
""")


def nices_after(nice: int) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", API_PROCESS, str(nice)], capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout)


def test_every_engine_thread_runs_below_the_api_process_and_no_priority_is_raised() -> None:
    seen = nices_after(5)
    assert seen["reached"] is True
    base = min(seen["api"])  # the test runner's own nice, whatever it is
    assert seen["api"] == [base]
    assert seen["engine"] == [min(19, base + 5)] * 2  # both threads of the child
    assert seen["lowest"] == [max(15, min(19, base + 5))] * 2  # already lower: left there
