"""Mutation testing of the service's core with mutmut 3, driven by the unit tests; prints a score per module.

    scripts/mutation                 every group below (slow: tens of minutes on 2 cores)
    scripts/mutation models          one group
    scripts/mutation --report        print the scores of the last run again, without running

mutmut only mutates a `src/` layout, so each group runs in its own scratch copy of the clone
(`.mutation/<group>/`, the files git knows, with `app/` as `src/`). mutmut records which tests reach
each function and runs only those against its mutants; each group gives it only the unit tests of
its area. A mutant is "killed" when a test fails on it (or it hangs past mutmut's timeout),
"survived" when every test still passes, "no tests" when no selected test reaches its function.
The score is killed / (killed + survived + no tests). Surviving mutants are listed in
docs/testing.md with the reason each is equivalent or acceptable.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
                 "orchestration/": "orchestration", "services/streaming/": "services/streaming"},
        # The spec's Python streaming API (ResponseStreamer.stream_response) is tested outside tests/unit/api.
        tests=("tests/unit/api", "tests/unit/test_spec_python_snippets.py"),
        # It builds a wheel from the clone's app/ folder, which the scratch copy has as src/.
        deselect=("tests/unit/api/test_web_page_routes.py::test_the_wheel_ships_the_page",)),
    "models": Group(
        modules={"models/lockfile.py": "models/lockfile.py", "models/verify.py": "models/verify.py"},
        tests=("tests/unit/models",),
        # The built demo models' own check (models/ is not copied); and a test that imports a copy of the
        # package as another user, where the mutants' trampoline (mutmut itself) cannot be imported.
        deselect=("tests/unit/models/test_demo_models_verify.py",
                  "tests/unit/models/test_verify.py::test_an_unreadable_directory_is_named_not_reported_as_missing_files")),
}

# mutmut's status words (`mutmut results --all true`) and what they count as here.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
UNDETECTED = {"survived", "no tests", "suspicious"}
PASS_SCORE = 80.0  # percent of mutants killed, per module


def _workspace(name: str, group: Group) -> Path:
    """A scratch copy of the clone with app/ as src/ and mutmut's settings for this group in pyproject.toml."""
    work = WORK / name
    if work.exists():
        shutil.rmtree(work)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if not source.is_file():
            continue
        target = work / ("src" + relative[len("app"):] if relative.startswith("app/") else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    only = [f"src/{PACKAGE}/{path}" + ("/*" if not path.endswith(".py") else "") for path in group.modules.values()]
    pytest_args = [arg for path in group.deselect for arg in ("--deselect", path)]
    settings = "\n".join([
        "", "[tool.mutmut]", f'source_paths = ["src/{PACKAGE}"]', f"only_mutate = {_toml_list(only)}",
        f"pytest_add_cli_args_test_selection = {_toml_list(list(group.tests))}",
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', *pytest_args])}",
        # The tests' own files outside tests/ (docs, configs, the lock) are read from the scratch copy.
        f"also_copy = {_toml_list(sorted({p.split('/')[0] for p in filter(None, listed)} - {'app', 'tests'}))}",
        "",
    ])
    with (work / "pyproject.toml").open("a", encoding="utf-8") as handle:
        handle.write(settings)
    return work


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _run(name: str, group: Group, max_children: int) -> None:
    work = _workspace(name, group)
    env = {**os.environ, "HXP_MODELS_DIR": str(ROOT / "models")}
    print(f"[mutation] {name}: mutmut run in {work} (tests: {' '.join(group.tests)})", flush=True)
    subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(max_children)],
                   cwd=work, env=env, check=False)


def _results(name: str) -> dict[str, str]:
    """mutant name -> status, from the group's last run."""
    work = WORK / name
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


def _module_of(mutant: str, group: Group) -> str | None:
    dotted = mutant.removeprefix(f"{PACKAGE}.")
    for label, path in group.modules.items():
        prefix = path.removesuffix(".py").replace("/", ".")
        if dotted.startswith(prefix + "."):
            return label
    return None


def report(names: list[str]) -> int:
    """Print a score per module; 1 if any module of a group that ran scores under the bar."""
    print(f"{'module':<24} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'score':>6} "
          f"{'unchecked':>9}")
    below = 0
    for name in names:
        group = GROUPS[name]
        results = _results(name)
        if not results:
            print(f"{name}: no results (run `scripts/mutation {name}`)")
            below += 1
            continue
        by_module: dict[str, Counter[str]] = {label: Counter() for label in group.modules}
        for mutant, status in results.items():
            label = _module_of(mutant, group)
            if label is not None:
                by_module[label][status] += 1
        for label, counts in by_module.items():
            killed = sum(counts[s] for s in DETECTED)
            counted = killed + sum(counts[s] for s in UNDETECTED)
            score = 100.0 * killed / counted if counted else 0.0
            below += counted > 0 and score < PASS_SCORE
            # "not checked": an interrupted run; the score covers the mutants that were.
            unchecked = sum(n for status, n in counts.items() if status not in DETECTED | UNDETECTED)
            below += unchecked > 0
            print(f"{label:<24} {counted:>7} {killed:>7} {counts['survived'] + counts['suspicious']:>8} "
                  f"{counts['no tests']:>8} {score:>5.1f}% {unchecked:>9}")
    return 1 if below else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"groups to run ({', '.join(GROUPS)}); default all")
    parser.add_argument("--report", action="store_true", help="only print the last run's scores")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="mutants tested in parallel (default: cores - 1)")
    args = parser.parse_args(argv)
    names = list(args.groups) or list(GROUPS)
    unknown = set(names) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))} (groups: {', '.join(GROUPS)})")
    if not args.report:
        for name in names:
            _run(name, GROUPS[name], args.max_children)
    return report(names)


if __name__ == "__main__":
    sys.exit(main())
