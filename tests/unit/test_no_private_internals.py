"""No code of ours reaches into CPython's private internals (issue 14): a runtime bump may change
or remove them without notice. The json module's C helpers (``json.encoder.c_make_encoder``,
``json.scanner.make_scanner``, ``json.decoder.scanstring``) were the hot paths of the writer and the
row reader; orjson and the json module's public API do that work now."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    path
    for folder in ("layers/core", "functions", "local", "bench")
    for path in (ROOT / folder).rglob("*.py")
    if ".aws-sam" not in path.parts
)
# The json module's submodules are its implementation; its public API is ``json`` itself.
PRIVATE_MODULES = ("json.encoder", "json.decoder", "json.scanner")
PRIVATE_NAMES = {
    "c_make_encoder",
    "c_encode_basestring",
    "c_encode_basestring_ascii",
    "make_scanner",
    "scanstring",
}
TYPING_ONLY = {"_typeshed"}  # read by type checkers, never imported at run time


def private_uses(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_NAMES:
                found.append(f"line {node.lineno}: .{node.attr}")
            continue
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            private = name.startswith(PRIVATE_MODULES) or name.split(".")[-1] in PRIVATE_NAMES
            if private or (top.startswith("_") and top not in TYPING_ONLY and top != "__future__"):
                found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import json.encoder",
        "from json.scanner import make_scanner",
        "from json import decoder",
        "import _json",
        "x = json.encoder.c_make_encoder",
        "f = json.decoder.scanstring",
    ],
)
def test_the_check_finds_each_kind_of_use(source: str) -> None:
    assert private_uses(source)


def test_public_json_is_not_flagged() -> None:
    assert (
        private_uses("import json\nfrom json import JSONDecodeError\njson.JSONDecoder().raw_decode('1', 0)")
        == []
    )


def test_no_source_uses_a_private_cpython_internal() -> None:
    assert len(SOURCES) > 50
    offenders = {
        str(path.relative_to(ROOT)): uses for path in SOURCES if (uses := private_uses(path.read_text()))
    }
    assert offenders == {}
