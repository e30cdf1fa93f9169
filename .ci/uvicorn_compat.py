"""Run the relay's tests against both ends of the uvicorn range that pyproject.toml pins.

relay/fastpath.py reads the state of uvicorn's sans-I/O WebSocket protocol, which
is not public API, so the relay's fan-out, ordering and fallback tests run on the
lowest version the pin allows and on the newest, not only on the one in .venv.

Each end is installed once, with its dependencies, by ``pip install --target``
into .venv/uvicorn-compat/<version>/ (kept while that version is an end, reused
without asking pip again), put first on PYTHONPATH, and ``tests/relay`` runs
against it with ``EXPECT_UVICORN=<version>``: tests/conftest.py refuses to run
unless that very version is the one imported. The newest end is asked of pip
while the lowest one runs; when it is the uvicorn in .venv, the one `make test`
has just run the whole suite on, it is not run again.

Usage: .venv/bin/python .ci/uvicorn_compat.py [REQUIREMENT]

REQUIREMENT, such as 'uvicorn>=0.44,<0.55', tries another range before it is
written into pyproject.toml; CI passes none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib.metadata import distributions, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv" / "uvicorn-compat"
#: Where the relay meets uvicorn: the fan-out shortcut and its fallback, ordering, slow
#: consumers, handshakes (refused ones too), the connection guard in front of uvicorn's
#: HTTP protocol and crowds against a real relay process, the app's lifespan and server start.
TESTS = [
    "tests/relay/test_fastpath.py",
    "tests/relay/test_guard.py",
    "tests/relay/test_crowds.py",
    "tests/relay/test_endpoint.py",
    "tests/relay/test_slow_consumer.py",
    "tests/relay/test_middleware.py",
    "tests/relay/test_chaos.py",
    "tests/relay/test_hub.py",
    "tests/relay/test_app.py",
    "tests/common/test_serving.py",
]
WORKERS = "2"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


class CompatError(Exception):
    """Something other than a test failure keeps an end from being tested."""


def pinned_requirement() -> Requirement:
    """The uvicorn requirement in ``[project].dependencies``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [
        requirement
        for requirement in map(Requirement, project["dependencies"])
        if canonicalize_name(requirement.name) == "uvicorn"
    ]
    if len(found) != 1:
        raise CompatError(f"pyproject.toml names uvicorn {len(found)} times in its dependencies")
    return found[0]


def lowest_allowed(specifier: SpecifierSet) -> Version:
    """The version a range starts at: its ``>=``, ``~=`` or ``==`` bound."""
    bounds = [Version(spec.version) for spec in specifier if spec.operator in (">=", "~=", "==")]
    lowest = max(bounds, default=None)
    if lowest is None or not specifier.contains(lowest):
        raise CompatError(f"uvicorn{specifier} has no lowest version to test (use >=, ~= or ==)")
    return lowest


def installed_uvicorn(directory: Path) -> str | None:
    for dist in distributions(path=[str(directory)]):
        if canonicalize_name(dist.metadata["Name"]) == "uvicorn":
            return dist.version
    return None


def ensure_installed(version: Version) -> tuple[str, Path]:
    """uvicorn ``version`` as released, and a directory holding it and its dependencies.

    A directory is named after the release in it, so ``0.35`` finds ``0.35.0``.
    """
    for cached in CACHE.glob("[0-9]*"):
        if installed_uvicorn(cached) == cached.name and Version(cached.name) == version:
            return cached.name, cached
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=CACHE))
    try:
        run_pip(["install", "--target", str(partial), f"uvicorn=={version}"])
        released = installed_uvicorn(partial)
        if released is None or Version(released) != version:
            raise CompatError(f"pip did not install uvicorn {version} (found {released})")
        target = CACHE / released
        shutil.rmtree(target, ignore_errors=True)  # an install that lost its dist-info
        partial.chmod(0o755)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return released, target


def run_pip(arguments: list[str]) -> None:
    # pip's warnings (index locations this machine does not have) are shown only on failure.
    result = subprocess.run([*PIP, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise CompatError(f"pip {' '.join(arguments)} failed:\n{result.stdout}{result.stderr}")


class NewestLookup:
    """Asks pip, in the background, which uvicorn release the range resolves to."""

    def __init__(self, requirement: Requirement, workdir: Path) -> None:
        self.specifier = requirement.specifier
        self.report = workdir / "newest.json"
        self.log = (workdir / "newest.log").open("w+")
        self.process = subprocess.Popen(
            [
                *PIP,
                *("install", "--dry-run", "--ignore-installed", "--no-deps"),
                *("--report", str(self.report), f"uvicorn{self.specifier}"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def version(self) -> Version:
        if self.process.wait() == 0:
            (install,) = json.loads(self.report.read_text())["install"]
            return Version(install["metadata"]["version"])
        # Offline, the newest end installed before stands in, if there is one.
        cached = [
            Version(path.name)
            for path in CACHE.glob("[0-9]*")
            if installed_uvicorn(path) == path.name and path.name in self.specifier
        ]
        if not cached:
            self.log.seek(0)
            raise CompatError(f"pip could not resolve the newest uvicorn:\n{self.log.read()}")
        print(f"uvicorn-compat: pip could not resolve the newest uvicorn; using {max(cached)}")
        return max(cached)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def run_tests(label: str, version: str, target: Path) -> bool:
    """Run the tests with ``target`` first on the path; True if they passed."""
    path = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "EXPECT_UVICORN": version}
    command = [
        *(sys.executable, "-m", "pytest", "-q", "-n", WORKERS, "-p", "no:cacheprovider"),
        *TESTS,
    ]
    print(f"uvicorn-compat: {' '.join(TESTS)} on uvicorn {version} ({label})", flush=True)
    started = time.monotonic()
    passed = subprocess.run(command, cwd=ROOT, env=env).returncode == 0
    elapsed = time.monotonic() - started
    outcome = "passed" if passed else "FAILED"
    print(f"uvicorn-compat: uvicorn {version} ({label}): {outcome} in {elapsed:.0f} s", flush=True)
    return passed


def main(arguments: list[str]) -> int:
    if len(arguments) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    requirement = Requirement(arguments[0]) if arguments else pinned_requirement()
    results = []
    with tempfile.TemporaryDirectory(prefix="uvicorn-compat-") as scratch:
        workdir = Path(scratch)
        newest_lookup = NewestLookup(requirement, workdir)
        try:
            lowest, target = ensure_installed(lowest_allowed(requirement.specifier))
            results.append(run_tests(f"lowest of {requirement}", lowest, target))
            newest, target = ensure_installed(newest_lookup.version())
        finally:
            newest_lookup.close()
        if newest == lowest:
            print(f"uvicorn-compat: {requirement} allows {lowest} alone; it ran once")
        elif newest == version("uvicorn") and not arguments:
            # `make test` ran the whole suite on it already, right before this.
            print(f"uvicorn-compat: uvicorn {newest} (newest) is .venv's: the suite ran on it")
        else:
            results.append(run_tests(f"newest of {requirement}", newest, target))
    if not arguments:  # the ends of the pinned range are all that is kept
        for stale in CACHE.iterdir():
            if stale.name not in (lowest, newest):
                shutil.rmtree(stale, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except CompatError as error:
        print(f"uvicorn-compat: {error}", file=sys.stderr)
        sys.exit(1)
