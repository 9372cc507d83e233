"""Cold start: how long each handler module takes to import in a fresh interpreter, what it imports
that is heavy, and how big the built layer is unzipped.

    .venv/bin/python -m bench.cold_start [--repeat 5]

Import time is the median over ``--repeat`` fresh processes (``python -X importtime``, handler
loaded from its file as Lambda does), without tracing (the default) and with it (template
parameter ``Tracing=Active``: Powertools' Tracer and the X-Ray SDK), in the same run. The layer is
``.aws-sam/build/CoreLayer`` (``make build``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / ".aws-sam" / "build" / "CoreLayer"
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


def import_profile(handler_file: Path, *, tracing: bool = False) -> tuple[float, dict[str, float]]:
    """(total seconds, cumulative seconds by top-level package) of importing one handler."""
    environment = {key: value for key, value in os.environ.items() if key != "QUERY_RELAY_TRACING"}
    environment |= _ENVIRONMENT | ({"QUERY_RELAY_TRACING": "Active"} if tracing else {})
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _LOAD_HANDLER, str(handler_file)],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
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
    if not LAYER.is_dir():
        print(f"layer: {LAYER.relative_to(ROOT)} is missing; run `make build` first")
        return 0
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
