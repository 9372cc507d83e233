"""Cold start: how long each handler module takes to import in a fresh interpreter, what it imports
that is heavy, what a Parquet job's first write adds, and how big the built layers are unzipped.

    .venv/bin/python -m bench.cold_start [--repeat 5]

Import time is the median over ``--repeat`` fresh processes (``python -X importtime``, handler
loaded from its file as Lambda does), without tracing (the default) and with it (template
parameter ``Tracing=Active``: Powertools' Tracer and the X-Ray SDK), in the same run.

pyarrow is the Parquet layer's, imported on a Parquet job's first write only: ``pyarrow.parquet``
is timed as .venv installed it and as the layer holds it (.venv's pyarrow copied, pruned by
layers/parquet/prune.py and compiled as layers/parquet/Makefile does; x86_64 here, aarch64 in the
layer). The Fetch handler is loaded with that copy first on the path: it must leave pyarrow
unimported (the bench exits 1 if not), and ``import query_relay.parquet`` after it is what the
first Parquet write pays. The layers are ``.aws-sam/build/CoreLayer`` and
``.aws-sam/build/ParquetLayer`` (``make build``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / ".aws-sam" / "build" / "CoreLayer"
PARQUET_LAYER = ROOT / ".aws-sam" / "build" / "ParquetLayer"
FETCH_BUILD = ROOT / ".aws-sam" / "build" / "FetchFunction"
PRUNE = ROOT / "layers" / "parquet" / "prune.py"
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024  # a function and all its layers, unzipped
HANDLERS = ("submit", "poll", "fetch", "cleanup")
TOP_PACKAGES = 6
# The Lambda environment the handlers read at import time (Powertools); nothing is called.
_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": "query-relay",
    "POWERTOOLS_METRICS_NAMESPACE": "QueryRelay",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_LOAD_HANDLER = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('app', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
)
# pyarrow.parquet from the directory in argv[1] (ahead of .venv's site-packages).
_IMPORT_PYARROW = "import sys\nsys.path.insert(0, sys.argv[1])\nimport pyarrow.parquet\n"
# The Fetch handler loaded with argv[2] first on the path; then what a Parquet job's first write imports.
_FIRST_PARQUET_WRITE = "\n".join(
    [
        "import json, sys, time",
        "sys.path.insert(0, sys.argv[2])",
        _LOAD_HANDLER,
        "unimported = 'pyarrow' not in sys.modules",
        "started = time.perf_counter()",
        "import query_relay.parquet",
        "seconds = time.perf_counter() - started",
        "found = {'unimported': unimported, 'seconds': seconds, 'pyarrow': sys.modules['pyarrow'].__file__}",
        "print(json.dumps(found))",
    ]
)
# What layers/parquet/Makefile compiles the layer with.
_COMPILE = ("-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash")


def _environment(*, tracing: bool = False) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "QUERY_RELAY_TRACING"}
    return environment | _ENVIRONMENT | ({"QUERY_RELAY_TRACING": "Active"} if tracing else {})


def import_profile(handler_file: Path, *, tracing: bool = False) -> tuple[float, dict[str, float]]:
    """(total seconds, cumulative seconds by top-level package) of importing one handler."""
    return importtime_profile(_LOAD_HANDLER, str(handler_file), tracing=tracing)


def importtime_profile(code: str, *args: str, tracing: bool = False) -> tuple[float, dict[str, float]]:
    """(total seconds, cumulative seconds by top-level package) of what ``code`` imports."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env=_environment(tracing=tracing),
    )
    total = 0.0
    by_package: dict[str, float] = {}
    enclosing: list[tuple[int, str]] = []  # (nesting level, package) of the lines around this one
    # importtime prints a module after everything it imported: read backwards, parents come first.
    for line in reversed(completed.stderr.splitlines()):
        # "import time: <self us> | <cumulative us> | <two spaces per nesting level><module>"
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative_us, name_column = line.removeprefix("import time:").split("|")
        name = name_column.strip()
        level = (len(name_column) - len(name) - 1) // 2
        package = name.split(".")[0]
        seconds = int(cumulative_us) / 1e6
        while enclosing and enclosing[-1][0] >= level:
            enclosing.pop()
        if level == 0:
            total += seconds
        if not enclosing or enclosing[-1][1] != package:  # inclusive time of a package's entry point
            by_package[package] = by_package.get(package, 0.0) + seconds
        enclosing.append((level, package))
    return total, by_package


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def largest_files(path: Path, count: int = TOP_PACKAGES) -> str:
    files = sorted((file for file in path.rglob("*") if file.is_file()), key=lambda f: f.stat().st_size)
    return ", ".join(f"{file.name} {file.stat().st_size / 1e6:.1f}" for file in reversed(files[-count:]))


def _venv_pyarrow() -> Path:
    spec = importlib.util.find_spec("pyarrow")  # found, not imported: this process times nothing
    if spec is None or spec.origin is None:
        raise SystemExit("pyarrow is not installed: run `make venv` (the dev extra has it)")
    return Path(spec.origin).parent


def pruned_pyarrow(site: Path) -> Path:
    """.venv's pyarrow in ``site`` as the Parquet layer holds its own: copied as the wheel has it,
    pruned and compiled as layers/parquet/Makefile does."""
    shutil.copytree(_venv_pyarrow(), site / "pyarrow", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, str(PRUNE), str(site)], check=True, capture_output=True)
    subprocess.run([sys.executable, *_COMPILE, str(site)], check=True, capture_output=True)
    return site


def parquet_imports(repeat: int) -> int:
    """Print what pyarrow costs a Parquet job, and whether the Fetch handler leaves it unimported."""
    installed = _venv_pyarrow().parent
    fetch = str(ROOT / "functions" / "fetch" / "app.py")
    with tempfile.TemporaryDirectory(prefix="cold-start-pyarrow-") as scratch:
        site = pruned_pyarrow(Path(scratch))
        as_installed, as_layer, first_write, answers = [], [], [], []
        for _ in range(repeat):  # alternately, so that all see the same machine
            as_installed.append(importtime_profile(_IMPORT_PYARROW, str(installed))[0])
            as_layer.append(importtime_profile(_IMPORT_PYARROW, str(site))[0])
            completed = subprocess.run(
                [sys.executable, "-c", _FIRST_PARQUET_WRITE, fetch, str(site)],
                capture_output=True,
                text=True,
                check=True,
                env=_environment(),
            )
            answers.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            first_write.append(answers[-1]["seconds"])
    print(
        f"  pyarrow.parquet {statistics.median(as_installed) * 1000:6.0f} ms as installed in .venv, "
        f"{statistics.median(as_layer) * 1000:.0f} ms pruned as the Parquet layer is"
    )
    leaves = all(answer["unimported"] for answer in answers)
    from_copy = all(answer["pyarrow"].startswith(f"{site}/") for answer in answers)
    print(
        f"  fetch handler leaves pyarrow unimported: {'yes' if leaves else 'NO'}; a Parquet job's first "
        f"write imports query_relay.parquet in {statistics.median(first_write) * 1000:.0f} ms "
        f"(pyarrow, pyarrow.compute, pyarrow.parquet{', pruned' if from_copy else ''})"
    )
    return 0 if leaves else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per handler (5)")
    args = parser.parse_args(argv)
    print("cold start: handler import time (median of fresh processes), without and with tracing,")
    print("and the heaviest imports without it")
    for name in HANDLERS:
        handler_file = ROOT / "functions" / name / "app.py"
        runs, traced = [], []
        for _ in range(args.repeat):  # alternately, so that both see the same machine
            runs.append(import_profile(handler_file))
            traced.append(import_profile(handler_file, tracing=True)[0])
        total = statistics.median(total for total, _ in runs)
        with_tracing = statistics.median(traced)
        packages = sorted(runs, key=lambda run: run[0])[len(runs) // 2][1]
        heaviest = sorted(packages.items(), key=lambda item: item[1], reverse=True)[:TOP_PACKAGES]
        listed = ", ".join(f"{package} {seconds * 1000:.0f}" for package, seconds in heaviest)
        print(
            f"  {name:8} {total * 1000:6.0f} ms, traced {with_tracing * 1000:6.0f} ms "
            f"(+{(with_tracing - total) * 1000:.0f})   (ms: {listed})"
        )
    print("parquet: what pyarrow costs the Fetch function (median of fresh processes)")
    status = parquet_imports(args.repeat)
    if not LAYER.is_dir():
        print(f"layer: {LAYER.relative_to(ROOT)} is missing; run `make build` first")
        return status
    site = LAYER / "python"
    sizes = sorted(
        (
            (entry.name, directory_bytes(entry) if entry.is_dir() else entry.stat().st_size)
            for entry in site.iterdir()
        ),
        key=lambda item: item[1],
        reverse=True,
    )
    total_bytes = directory_bytes(LAYER)
    largest = ", ".join(f"{name} {size / 1e6:.1f}" for name, size in sizes[:TOP_PACKAGES])
    print(f"layer: {LAYER.relative_to(ROOT)} unzipped {total_bytes / 1e6:.1f} MB (MB: {largest})")
    if not PARQUET_LAYER.is_dir():
        print(f"layer: {PARQUET_LAYER.relative_to(ROOT)} is missing; run `make build` first")
        return status
    parquet_bytes = directory_bytes(PARQUET_LAYER)
    print(
        f"layer: {PARQUET_LAYER.relative_to(ROOT)} unzipped {parquet_bytes / 1e6:.1f} MB "
        f"(MB: {largest_files(PARQUET_LAYER)})"
    )
    if FETCH_BUILD.is_dir():
        fetch_bytes = directory_bytes(FETCH_BUILD) + total_bytes + parquet_bytes
        print(
            f"fetch: function and both layers unzipped {fetch_bytes / 1e6:.1f} MB "
            f"of the {LAMBDA_UNZIPPED_LIMIT / 1e6:.1f} MB (250 MiB) Lambda allows"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
