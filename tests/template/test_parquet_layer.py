"""The Parquet layer (layers/parquet): pyarrow alone, pinned as uv.lock pins it, pruned to what a
Parquet writer loads, attached to the Submit and Fetch functions only, and never imported by a handler as it
is loaded (query_relay.parquet imports it, on a Parquet job's first write).

The prune is checked as the build does it: layers/parquet/prune.py, with prune.txt, run on a copy
of .venv's pyarrow (x86_64; the layer's is aarch64, the same files by other platform tags), which
must then still write every column type query_relay.parquet writes, with every codec it offers, in
row groups, and read them back, in an interpreter that sees the copy and the standard library only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from query_relay_local import template as local_template
from query_relay_local.iam import sam_translate

from .test_template import ROOT, load_template, resources_of_type

LAYER_DIR = ROOT / "layers" / "parquet"
PRUNE = LAYER_DIR / "prune.py"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"  # Lambda's arm64 (Amazon Linux 2023, glibc 2.34)

# Run with `python -I -S` and the pruned copy first on sys.path: no PYTHONPATH, no site-packages,
# as on Lambda, where /opt/python holds pyarrow and no numpy. Writes the same rows with each codec
# query_relay.parquet offers, in two row groups, reads each file back and prints what it found.
_PARQUET_PROBE = r"""
import json, sys
site, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, site)
from decimal import Decimal
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

def text(values):
    return pa.array(values, type=pa.string())

def timestamps(values, target):  # as query_relay.parquet parses them: past microseconds dropped
    trimmed = pc.replace_substring_regex(text(values), pattern=r"(\.\d{6})\d+", replacement=r"\1")
    return pc.cast(trimmed, target)

utc, local = pa.timestamp("us", tz="UTC"), pa.timestamp("us")
schema = pa.schema([
    ("i", pa.int64()), ("f", pa.float64()), ("b", pa.bool_()), ("s", pa.string()),
    ("d", pa.decimal128(38, 2)), ("day", pa.date32()), ("ts", utc), ("local", local),
])
columns = [
    pa.array([1, -(2**63), 2**63 - 1, None, 0], type=pa.int64()),
    pa.array([1.5, -0.25, 1e308, None, 2.0], type=pa.float64()),
    pa.array([True, False, None, True, False], type=pa.bool_()),
    text(["a", "\u00fcn\u00efc\u00f8d\u00e9 \u2713", "", None, "x" * 300]),
    pa.array(
        [Decimal("999999999999999999999999999999999999.99"), Decimal("-0.01"), None, Decimal(0),
         Decimal("1.5")],
        type=pa.decimal128(38, 2),
    ),
    pc.cast(text(["2026-12-04", "1970-01-01", None, "0001-01-01", "9999-12-31"]), pa.date32()),
    timestamps(
        ["2026-12-04T10:20:30.123456Z", "1970-01-01T00:00:00Z", None, "2026-12-04T10:20:30.1234567Z",
         "1999-12-31T23:59:59.5+02:00"],
        utc,
    ),
    timestamps(["2026-12-04 10:20:30.5", None, "2026-12-04T00:00:00", "1900-01-01 00:00:00.000001999",
                "2026-02-28T23:59:59"], local),
]
table = pa.Table.from_arrays(columns, schema=schema)

def plain(value):
    if isinstance(value, Decimal):
        return str(value)
    return value.isoformat() if hasattr(value, "isoformat") else value

def canonical(read):
    values = {}
    for field in read.schema:
        column = read.column(field.name)
        if pa.types.is_timestamp(field.type):  # naive UTC: to_pylist of a zone needs a tz database
            column = column.cast(pa.timestamp("us"))
        values[field.name] = [plain(value) for value in column.to_pylist()]
    return values

files = {}
for codec in ("NONE", "SNAPPY", "GZIP", "ZSTD"):
    path = f"{out}/{codec}.parquet"
    writer = pq.ParquetWriter(path, schema, compression=codec, write_statistics=True)
    writer.write_table(table.slice(0, 3), row_group_size=3)
    writer.write_table(table.slice(3), row_group_size=3)
    writer.close()
    metadata = pq.ParquetFile(path).metadata
    read = pq.read_table(path)
    files[codec] = {
        "compression": metadata.row_group(0).column(0).compression,
        "row_groups": [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)],
        "schema": [[field.name, str(field.type)] for field in read.schema],
        "values": canonical(read),
    }

try:
    pa.fs.S3FileSystem
    s3 = True
except ImportError:
    s3 = False
mapped = {line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}
modules = [m for name, m in sys.modules.items() if name.split(".")[0] == "pyarrow"]
print(json.dumps({
    "version": pa.__version__,
    "pyarrow": pa.__file__,
    "modules": sorted(m.__file__ for m in modules if getattr(m, "__file__", None)),
    "libraries": sorted(p for p in mapped if "arrow" in p or "parquet" in p),
    "numpy": "numpy" in sys.modules,
    "dataset": "pyarrow._dataset_parquet" in sys.modules,
    "s3": s3,
    "files": files,
}))
"""

EXPECTED_SCHEMA = [
    ["i", "int64"],
    ["f", "double"],
    ["b", "bool"],
    ["s", "string"],
    ["d", "decimal128(38, 2)"],
    ["day", "date32[day]"],
    ["ts", "timestamp[us, tz=UTC]"],
    ["local", "timestamp[us]"],
]
EXPECTED_VALUES = {
    "i": [1, -(2**63), 2**63 - 1, None, 0],
    "f": [1.5, -0.25, 1e308, None, 2.0],
    "b": [True, False, None, True, False],
    "s": ["a", "ünïcødé ✓", "", None, "x" * 300],
    "d": ["999999999999999999999999999999999999.99", "-0.01", None, "0.00", "1.50"],
    "day": ["2026-12-04", "1970-01-01", None, "0001-01-01", "9999-12-31"],
    "ts": [
        "2026-12-04T10:20:30.123456",
        "1970-01-01T00:00:00",
        None,
        "2026-12-04T10:20:30.123456",
        "1999-12-31T21:59:59.500000",
    ],
    "local": [
        "2026-12-04T10:20:30.500000",
        None,
        "2026-12-04T00:00:00",
        "1900-01-01T00:00:00.000001",
        "2026-02-28T23:59:59",
    ],
}

# Load each handler as Lambda does (layers/core on the path, as /opt/python), then say which of
# them left pyarrow or query_relay.parquet imported.
_HANDLER_PROBE = """
import importlib.util, json, sys
loaded = {}
for index, path in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"handler_{index}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded[path] = sorted(
        name for name in sys.modules if name.split(".")[0] == "pyarrow" or name == "query_relay.parquet"
    )
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _locked(name: str) -> dict[str, Any]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    [package] = [package for package in lock["package"] if package["name"] == name]
    return dict(package)


def _requirements() -> list[str]:
    lines = (line.strip() for line in (LAYER_DIR / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _function_layers(template: dict[str, Any]) -> dict[str, list[Any] | None]:
    functions = resources_of_type(template, "AWS::Serverless::Function")
    return {name: resource["Properties"].get("Layers") for name, resource in functions.items()}


def test_only_the_functions_that_land_results_list_the_parquet_layer(template: dict[str, Any]) -> None:
    # Globals give every function the core layer; Fetch and Submit (whose fast path lands a result
    # at once) add the Parquet layer, no other adds any.
    assert template["Globals"]["Function"]["Layers"] == [{"Ref": "CoreLayer"}]
    layers = _function_layers(template)
    assert layers.pop("FetchFunction") == [{"Ref": "ParquetLayer"}]
    assert layers.pop("SubmitFunction") == [{"Ref": "ParquetLayer"}]
    assert layers, "no other function in the template"
    assert all(listed is None for listed in layers.values()), layers


def test_after_the_sam_transform_submit_and_fetch_have_both_layers_and_the_others_the_core_layer() -> None:
    # SAM appends a function's Layers to Globals' own: what Lambda gets, layer by layer name.
    resources = sam_translate(local_template.load_template())["Resources"]
    names = {
        logical_id: resource["Properties"]["LayerName"]["Fn::Sub"]
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::LayerVersion"
    }
    functions = {
        logical_id: [names[layer["Ref"]] for layer in resource["Properties"].get("Layers", [])]
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    core, parquet = f"{local_template.LOCAL_STACK_NAME}-core", f"{local_template.LOCAL_STACK_NAME}-parquet"
    assert functions.pop("FetchFunction") == [core, parquet]
    assert functions.pop("SubmitFunction") == [core, parquet]
    assert functions
    assert all(layers == [core] for layers in functions.values()), functions


def test_the_parquet_layer_is_built_by_its_makefile_for_python313_on_arm64(template: dict[str, Any]) -> None:
    layer = template["Resources"]["ParquetLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    properties = layer["Properties"]
    assert properties["ContentUri"] == "layers/parquet"
    assert properties["LayerName"] == {"Fn::Sub": "${AWS::StackName}-parquet"}
    assert properties["CompatibleRuntimes"] == ["python3.13"]
    assert properties["CompatibleArchitectures"] == ["arm64"]
    assert properties["RetentionPolicy"] == "Delete"
    makefile = (LAYER_DIR / "Makefile").read_text()
    assert re.search(r"^build-ParquetLayer:", makefile, re.MULTILINE)
    assert "$(ARTIFACTS_DIR)/python" in makefile


def test_the_layer_pins_uv_locks_pyarrow_and_the_hash_of_its_aarch64_wheel() -> None:
    # `make lock` may move pyarrow; the layer must not silently keep (or half-take) the old one.
    pyarrow = _locked("pyarrow")
    wheels = [
        wheel for wheel in pyarrow["wheels"] if wheel["url"].endswith(f"-cp313-cp313-{WHEEL_PLATFORM}.whl")
    ]
    assert len(wheels) == 1, f"uv.lock has no single cp313 {WHEEL_PLATFORM} wheel of pyarrow"
    assert _requirements() == [f"pyarrow=={pyarrow['version']} --hash={wheels[0]['hash']}"], (
        "layers/parquet/requirements.txt is not uv.lock's pyarrow and aarch64 wheel hash"
    )
    # ... and the Makefile asks pip for that wheel's platform, for Lambda's python.
    makefile = (LAYER_DIR / "Makefile").read_text()
    assert f"PLATFORM := {WHEEL_PLATFORM}" in makefile
    for option in ("--platform $(PLATFORM)", "--python-version 3.13", "--implementation cp",
                   "--only-binary=:all:", "--require-hashes", "--no-deps"):  # fmt: skip
        assert option in makefile, option


def test_the_parquet_extra_is_pyarrow_alone() -> None:
    # The layer holds the `parquet` extra, which is pyarrow and nothing it depends on.
    project = _locked("query-relay")
    assert project["optional-dependencies"]["parquet"] == [{"name": "pyarrow"}]
    assert "dependencies" not in _locked("pyarrow")


def _venv_pyarrow() -> Path:
    spec = importlib.util.find_spec("pyarrow")  # found, not imported
    assert spec is not None
    assert spec.origin is not None, "pyarrow is not installed: run `make venv` (the dev extra has it)"
    return Path(spec.origin).parent


def _copy_of_venv_pyarrow(site: Path) -> Path:
    """.venv's pyarrow copied under ``site`` as the wheel holds it (no __pycache__). Hard links
    where possible: prune.py only removes files, never writes one."""

    def link_or_copy(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    shutil.copytree(
        _venv_pyarrow(),
        site / "pyarrow",
        ignore=shutil.ignore_patterns("__pycache__"),
        copy_function=link_or_copy,
    )
    return site


def _prune(site: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PRUNE), str(site), *extra], capture_output=True, text=True, check=False
    )


def _files(site: Path) -> set[str]:
    return {path.relative_to(site).as_posix() for path in site.rglob("*") if path.is_file()}


def test_the_pruned_pyarrow_still_writes_and_reads_every_column_type(tmp_path: Path) -> None:
    # Given .venv's pyarrow pruned by the build's own script and list
    site = _copy_of_venv_pyarrow(tmp_path / "site")
    before = _files(site)
    pruned = _prune(site)
    assert pruned.returncode == 0, pruned.stderr
    left = _files(site)
    gone = before - left
    assert left < before
    for removed in ("libarrow_flight", "libarrow_s3", "_flight.", "_s3fs.", "_substrait.", "include/", "src/",
                    "tests/"):  # fmt: skip
        assert any(f"pyarrow/{removed}" in path for path in gone), removed
    assert not [path for path in left if path.endswith((".pxd", ".pyx", ".pxi", ".h", ".cc"))]
    # one file per shared library: the name it is loaded by (its SONAME), not the wheel's copies
    libraries = sorted(path for path in left if re.match(r"pyarrow/lib(arrow|parquet)", path))
    assert len(libraries) > 1
    assert all(re.fullmatch(r"pyarrow/lib\w+\.so\.\d+", path) for path in libraries), libraries
    assert "pyarrow/libarrow_substrait" in " ".join(libraries)  # NEEDED by pyarrow.lib: kept

    # When an interpreter that sees only the copy and the standard library writes and reads Parquet
    out = tmp_path / "out"
    out.mkdir()
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PARQUET_PROBE, str(site), str(out)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout)

    # Then it was the pruned copy that ran, all of it: its Python modules and its libraries
    assert found["pyarrow"] == str(site / "pyarrow" / "__init__.py")
    assert found["modules"]
    assert all(path.startswith(f"{site}/pyarrow/") for path in found["modules"]), found["modules"]
    assert found["libraries"]
    assert all(path.startswith(f"{site}/pyarrow/") for path in found["libraries"]), found["libraries"]
    assert found["version"] == _locked("pyarrow")["version"]
    assert not found["numpy"]
    assert found["dataset"]  # read_table's own path (pyarrow.dataset), not its ParquetFile fallback
    assert not found["s3"]  # pyarrow.fs without S3: the prune took effect
    # And every codec wrote both row groups and read back every value as it was written
    assert set(found["files"]) == {"NONE", "SNAPPY", "GZIP", "ZSTD"}
    for codec, written in found["files"].items():
        assert written["compression"] == ("UNCOMPRESSED" if codec == "NONE" else codec)
        assert written["row_groups"] == [3, 2], codec
        assert written["schema"] == EXPECTED_SCHEMA, codec
        assert written["values"] == EXPECTED_VALUES, codec


def test_prune_refuses_to_remove_a_library_a_kept_one_needs(tmp_path: Path) -> None:
    # libarrow_substrait is Substrait's, but pyarrow.lib NEEDs it: without it nothing imports.
    site = _copy_of_venv_pyarrow(tmp_path / "site")
    before = _files(site)
    extended = tmp_path / "prune.txt"
    extended.write_text((LAYER_DIR / "prune.txt").read_text() + "pyarrow/libarrow_substrait.so*\n")
    refused = _prune(site, "--list", str(extended))
    assert refused.returncode == 1
    assert re.search(
        r"removes libarrow_substrait\.so\.\d+, which kept files NEED: .*pyarrow/lib\.cpython-313-",
        refused.stderr,
    )
    assert _files(site) == before  # nothing removed


def test_prune_refuses_a_pattern_that_matches_nothing(tmp_path: Path) -> None:
    # A pyarrow that renames a file must fail the build, not ship the file.
    site = _copy_of_venv_pyarrow(tmp_path / "site")
    before = _files(site)
    extended = tmp_path / "prune.txt"
    extended.write_text((LAYER_DIR / "prune.txt").read_text() + "pyarrow/libarrow_renamed.so*\n")
    refused = _prune(site, "--list", str(extended))
    assert refused.returncode == 1
    assert "'pyarrow/libarrow_renamed.so*' matches nothing" in refused.stderr
    assert _files(site) == before


def test_no_handler_imports_pyarrow_as_it_is_loaded(template: dict[str, Any]) -> None:
    # Fetch loads pyarrow on a Parquet job's first write only; the other functions have no pyarrow
    # at all. .venv has it, so a handler that imported it at load would show it here.
    functions = resources_of_type(template, "AWS::Serverless::Function")
    handlers = {}
    for name, resource in sorted(functions.items(), key=lambda item: item[0] != "FetchFunction"):
        module, _ = resource["Properties"]["Handler"].rsplit(".", 1)
        handlers[str(ROOT / resource["Properties"]["CodeUri"] / f"{module}.py")] = name
    environment = {key: value for key, value in os.environ.items() if key != "QUERY_RELAY_TRACING"}
    environment |= {
        "PYTHONPATH": str(ROOT / "layers/core"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "query-relay",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _HANDLER_PROBE, *handlers],
        capture_output=True, text=True, check=False, env=environment,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert next(iter(loaded)).endswith("functions/fetch/app.py")  # Fetch first, on its own
    assert {handlers[path]: modules for path, modules in loaded.items()} == {
        name: [] for name in handlers.values()
    }


def test_the_probe_sees_pyarrow_when_a_handler_imports_it(tmp_path: Path) -> None:
    # The check above can fail: a handler that imports pyarrow at load is named.
    handler = tmp_path / "app.py"
    handler.write_text("import pyarrow.parquet\n\ndef lambda_handler(event, context):\n    return {}\n")
    completed = subprocess.run(
        [sys.executable, "-c", _HANDLER_PROBE, str(handler)], capture_output=True, text=True, check=True
    )
    assert "pyarrow.parquet" in json.loads(completed.stdout)[str(handler)]
