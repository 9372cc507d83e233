"""The ``query-relay`` command's entry point. The command runs the local stack and the emulators,
which need the ``local`` extra (moto, werkzeug, cfn-lint, aws-sam-translator): installed without
it, the command says so rather than printing a traceback."""

from __future__ import annotations

import sys

# The top-level modules of the `local` extra's packages.
LOCAL_EXTRA_MODULES = frozenset({"moto", "werkzeug", "cfnlint", "samtranslator"})
EXIT_USAGE = 2


def main() -> int:
    try:
        from query_relay_local.template import apply_powertools_environment  # noqa: PLC0415 - the extra

        apply_powertools_environment()  # before query_relay is imported: its Logger and Metrics read it
        from query_relay_local.cli import main as cli_main  # noqa: PLC0415 - imports the extra

        return cli_main()
    except ModuleNotFoundError as missing:
        module = (missing.name or "").partition(".")[0]
        if module not in LOCAL_EXTRA_MODULES:
            raise
        print(
            f"query-relay: this command needs the 'local' extra, and {module} is not installed: "
            "pip install 'query-relay[local]' (or, in a clone, make venv)",
            file=sys.stderr,
        )
        return EXIT_USAGE
