"""Mutation testing of the service's core with mutmut 3, driven by the unit tests; prints a score per module.

    scripts/mutation                     every module below (slow: hours on 2 cores)
    scripts/mutation models              one group's modules, one after another
    scripts/mutation api/errors.py       one module
    scripts/mutation api/errors.py --again
                                         re-run the module's mutants that the last run did not kill
                                         (or timed out), against the tests as they are now
    scripts/mutation api/errors.py --mutants 'hxp_enterprise_llm.api.errors.x_validation_error*'
                                         re-run the mutants these names match (mutmut's wildcards)
    scripts/mutation --report [MODULE|GROUP ...]
                                         print the scores of the last runs again, without running

mutmut only mutates a `src/` layout, so each module runs in its own scratch copy of the clone
(`.mutation/<module>/`, the files git knows, with `app/` as `src/`). mutmut records which tests reach
each function and runs only those against its mutants; each module's run gives it only the unit
tests of its group's area. A re-run (`--again`, `--mutants`) keeps the copy and its results and
refreshes the tests in it; the module's own source must not have changed since its full run.
A mutant is "killed" when a test fails on it (or it hangs: past mutmut's CPU-time limit, or asleep
for --hang-seconds, when this script stops it),
"survived" when every test still passes, "no tests" when no selected test reaches its function.
The score is killed / (killed + survived + no tests). Surviving mutants are listed in
docs/testing.md with the reason each is equivalent or acceptable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hxp_tools import ROOT

WORK = ROOT / ".mutation"
PACKAGE = "hxp_enterprise_llm"


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the unit tests that drive them."""

    modules: dict[str, str]  # module label -> path under app/hxp_enterprise_llm (a file or a package folder)
    tests: tuple[str, ...]
    deselect: tuple[str, ...] = ()


GROUPS: dict[str, Group] = {
    "api": Group(
        modules={"api/errors.py": "api/errors.py", "api/lifecycle.py": "api/lifecycle.py",
                 # One run per module of the package: each gets its own score (and a run short enough to finish).
                 **{f"orchestration/{name}": f"orchestration/{name}" for name in (
                     "admission.py", "generation.py", "interactive_orchestrator.py", "key_policy.py", "quotas.py",
                     "request_record.py", "service_state.py")},
                 "services/streaming/": "services/streaming"},
        # The spec's Python streaming API (ResponseStreamer.stream_response) is tested outside tests/unit/api.
        tests=("tests/unit/api", "tests/unit/test_spec_python_snippets.py"),
        # It builds a wheel from the clone's app/ folder, which the scratch copy has as src/.
        deselect=("tests/unit/api/test_web_page_routes.py::test_the_wheel_ships_the_page",)),
    "models": Group(
        modules={"models/lockfile.py": "models/lockfile.py", "models/verify.py": "models/verify.py"},
        tests=("tests/unit/models",),
        # The built demo models' own check (models/ is not copied).
        deselect=("tests/unit/models/test_demo_models_verify.py",)),
}

# mutmut's status words (`mutmut results --all true`) and what they count as here.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
UNDETECTED = {"survived", "no tests", "suspicious"}
PASS_SCORE = 80.0  # percent of mutants killed, per module


@dataclass(frozen=True)
class Module:
    label: str  # as in Group.modules and the report
    path: str  # under app/hxp_enterprise_llm
    group: Group

    @property
    def work(self) -> Path:
        return WORK / self.label.removesuffix("/").removesuffix(".py").replace("/", ".")

    @property
    def source(self) -> str:
        return f"src/{PACKAGE}/{self.path}"


MODULES = {label: Module(label, path, group) for group in GROUPS.values() for label, path in group.modules.items()}


def _selected(names: list[str]) -> list[Module]:
    """Modules named, or those of the groups named, in order and once each; every module when none."""
    chosen: dict[str, Module] = {}
    for name in names or list(GROUPS):
        labels = list(GROUPS[name].modules) if name in GROUPS else [name]
        chosen.update((label, MODULES[label]) for label in labels)
    return list(chosen.values())


def _copy_clone(work: Path) -> list[str]:
    """Copy the files git knows (tracked or not ignored) into work, app/ as src/; the top-level names."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if not source.is_file():
            continue
        target = work / ("src" + relative[len("app"):] if relative.startswith("app/") else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return sorted({relative.split("/")[0] for relative in filter(None, listed)})


def _workspace(module: Module) -> Path:
    """A fresh scratch copy of the clone with mutmut's settings for this module in pyproject.toml."""
    work, group = module.work, module.group
    if work.exists():
        shutil.rmtree(work)
    top = _copy_clone(work)
    only = [module.source + ("/*" if not module.path.endswith(".py") else "")]
    pytest_args = [arg for path in group.deselect for arg in ("--deselect", path)]
    settings = "\n".join([
        "", "[tool.mutmut]", f'source_paths = ["src/{PACKAGE}"]', f"only_mutate = {_toml_list(only)}",
        f"pytest_add_cli_args_test_selection = {_toml_list(list(group.tests))}",
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', *pytest_args])}",
        # The tests' own files outside tests/ (docs, configs, the lock) are read from the scratch copy.
        f"also_copy = {_toml_list([name for name in top if name not in ('app', 'tests')])}",
        "",
    ])
    (work / "mutmut-settings.toml").write_text(settings, encoding="utf-8")
    with (work / "pyproject.toml").open("a", encoding="utf-8") as handle:
        handle.write(settings)
    return work


def _refresh(module: Module) -> Path:
    """The module's last scratch copy with the clone's files copied in again (the tests as they are now)."""
    work = module.work
    if not (work / "mutants").is_dir():
        sys.exit(f"[mutation] {module.label}: no earlier run to re-run from (run `scripts/mutation {module.label}`)")
    source = ROOT / "app" / PACKAGE / module.path
    files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
    changed = [path for path in files
               if path.read_bytes() != (work / module.source / path.relative_to(source)).read_bytes()]
    copied = list((work / module.source).rglob("*.py")) if source.is_dir() else [work / module.source]
    if changed or len(copied) != len(files):  # a module file edited, added or removed
        # mutmut keeps the mutants it generated from the old source: only a full run mutates the new one.
        sys.exit(f"[mutation] {module.label}: its source changed since the last run; run it in full")
    settings = (work / "mutmut-settings.toml").read_text(encoding="utf-8")
    _copy_clone(work)
    with (work / "pyproject.toml").open("a", encoding="utf-8") as handle:
        handle.write(settings)
    return work


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _run(module: Module, max_children: int, mutants: list[str], hang_seconds: float) -> None:
    """A full run of the module, or a re-run of the named mutants (names or mutmut wildcards)."""
    work = _refresh(module) if mutants else _workspace(module)
    if mutants == [AGAIN]:
        # Timeouts too: on a loaded machine a mutant's tests can pass the wall-clock limit without hanging.
        mutants = sorted(name for name, status in _results(work).items() if status in UNDETECTED | {"timeout"})
        if not mutants:
            print(f"[mutation] {module.label}: every mutant was killed in the last run", flush=True)
            return
    env = {**os.environ, "HXP_MODELS_DIR": str(ROOT / "models")}
    what = f"{len(mutants)} mutant name(s) again" if mutants else "every mutant"
    print(f"[mutation] {module.label}: mutmut run ({what}) in {work} (tests: {' '.join(module.group.tests)})",
          flush=True)
    finished = threading.Event()
    watchdog = threading.Thread(target=_stop_sleeping_hangs, args=(finished, hang_seconds), daemon=True)
    watchdog.start()
    try:
        subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(max_children),
                        *mutants], cwd=work, env=env, check=False)
    finally:
        finished.set()
        watchdog.join()


def _stop_sleeping_hangs(finished: threading.Event, hang_seconds: float) -> None:
    """Every 10 s until finished, stop the mutants' test runs that sleep instead of working."""
    while not finished.wait(10):
        for title, elapsed, cpu in stop_sleepers(MUTANT_TITLE, hang_seconds):
            print(f"[mutation] {title.removeprefix(MUTANT_TITLE)}: asleep for {elapsed} s ({cpu} s of CPU), "
                  "a hang: stopped", flush=True)


MUTANT_TITLE = "mutmut: "  # the process title mutmut gives each mutant's test run


def stop_sleepers(title_prefix: str, hang_seconds: float) -> list[tuple[str, int, int]]:
    """Kill the processes titled title_prefix... older than hang_seconds that used under a tenth of it on the CPU.

    mutmut 3's timeout is a CPU-time limit (SIGXCPU), so a mutant whose tests sleep (a request waiting
    for a slot that never comes, until its queue timeout, in test after test) never reaches it and mutmut
    waits forever. Little CPU over a long time tells such a hang from a slow run; mutmut reports the
    killed process as "segfault", which counts as killed. Returns (title, elapsed s, CPU s) of each.
    """
    listed = subprocess.run(["ps", "-eo", "pid=,etimes=,times=,args="], capture_output=True, text=True,
                            check=False).stdout
    stopped = []
    for fields in (line.split(None, 3) for line in listed.splitlines()):
        if len(fields) < 4:  # a process with no command line
            continue
        pid, elapsed, cpu, title = fields
        if title.startswith(title_prefix) and int(elapsed) > hang_seconds and int(cpu) < int(elapsed) / 10:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
                stopped.append((title, int(elapsed), int(cpu)))
    return stopped


def _results(work: Path) -> dict[str, str]:
    """mutant name -> status, from the last run in work."""
    if not (work / "mutants").is_dir():
        return {}
    listed = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "results", "--all", "true"],
                            cwd=work, capture_output=True, text=True, check=False).stdout
    found = {}
    for line in listed.splitlines():
        match = re.match(r"\s*(\S+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def report(modules: list[Module]) -> int:
    """Print a score per module; 1 if any module has no results, mutants not checked, or a score under the bar."""
    width = max(len(module.label) for module in modules)
    print(f"{'module':<{width}} {'mutants':>7} {'killed':>7} {'(timeout)':>9} {'survived':>8} {'no tests':>8} "
          f"{'score':>6} {'unchecked':>9}")
    below = 0
    for module in modules:
        counts = Counter(_results(module.work).values())
        if not counts:
            print(f"{module.label:<{width}} no results (run `scripts/mutation {module.label}`)")
            below += 1
            continue
        killed = sum(counts[s] for s in DETECTED)
        counted = killed + sum(counts[s] for s in UNDETECTED)
        score = 100.0 * killed / counted if counted else 0.0
        # "not checked": an interrupted run; the score covers the mutants that were.
        unchecked = sum(n for status, n in counts.items() if status not in DETECTED | UNDETECTED)
        below += score < PASS_SCORE or unchecked > 0
        # Timeouts count as killed but are shown: on a loaded machine they can be slowness, not a hang.
        print(f"{module.label:<{width}} {counted:>7} {killed:>7} {counts['timeout']:>9} "
              f"{counts['survived'] + counts['suspicious']:>8} {counts['no tests']:>8} {score:>5.1f}% {unchecked:>9}")
    return 1 if below else 0


AGAIN = "--again"  # stands for the survivors of the last run in _run's mutant names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="GROUP|MODULE",
                        help=f"groups ({', '.join(GROUPS)}) or modules ({', '.join(MODULES)}); default all")
    parser.add_argument("--report", action="store_true", help="only print the last runs' scores")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--again", action="store_true",
                       help="re-run the mutants the last run did not kill (or timed out), against the current tests")
    again.add_argument("--mutants", nargs="+", default=[], metavar="NAME",
                       help="re-run only these mutants (mutmut names, * and ? as wildcards)")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="mutants tested in parallel (default: cores - 1)")
    parser.add_argument("--hang-seconds", type=float, default=180,
                        help="stop a mutant's test run asleep this long (mutmut's own timeout counts CPU time only)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(GROUPS) - set(MODULES)
    if unknown:
        parser.error(f"unknown name(s) {', '.join(sorted(unknown))} (groups: {', '.join(GROUPS)}; "
                     f"modules: {', '.join(MODULES)})")
    modules = _selected(args.names)
    if not args.report:
        for module in modules:
            _run(module, args.max_children, [AGAIN] if args.again else args.mutants, args.hang_seconds)
    return report(modules)


if __name__ == "__main__":
    sys.exit(main())
