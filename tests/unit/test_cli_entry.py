"""The ``query-relay`` command installed without the ``local`` extra names what is missing and
how to get it, exit status 2, instead of a traceback (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs the installed entry point with one module of the extra made unimportable.
_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None  # `import <name>` now raises ModuleNotFoundError, as if not installed
sys.argv = ["query-relay", *sys.argv[2:]]
from query_relay_local.entry import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("missing", "command"),
    [("werkzeug", ["--help"]), ("moto", ["demo"]), ("cfnlint", ["demo"]), ("samtranslator", ["demo"])],
)
def test_without_the_local_extra_the_command_says_what_to_install(missing: str, command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT, missing, *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{missing} is not installed" in done.stderr
    assert "query-relay[local]" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_the_extra_the_command_runs() -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT, "no_such_module_at_all", "--help"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: query-relay" in done.stdout
