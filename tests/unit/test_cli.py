"""``query-relay``: usage errors are caught before anything starts (exit 2, the file and field named,
no secret echoed); ``run --json`` runs a job through the whole local stack against the ES|QL emulator."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from query_relay_local import cli
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack
from query_relay_local.upstreams import UPSTREAMS

SECRET = "sk-never-print-this-5b1e"


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def a_connection(base_url: str = "http://127.0.0.1:9200", **changes: Any) -> dict[str, Any]:
    return {
        "provider": "esql",
        "base_url": base_url,
        "auth": {"type": "api_key", "api_key": SECRET},
        **changes,
    }


def a_spec(**changes: Any) -> dict[str, Any]:
    return {"connection": "es-local", "query": {"query": "FROM employees | LIMIT 3"}, **changes}


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage errors must be found before the local stack starts: starting one fails the test."""

    def refuse(self: LocalStack) -> LocalStack:
        raise AssertionError("the local stack was started despite a usage error")

    monkeypatch.setattr(LocalStack, "start", refuse)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- usage errors: exit 2, nothing started ------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])

    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("run", "emulate", "demo"):
        assert command in help_text


def test_a_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])

    assert exit_info.value.code == 2


@pytest.mark.usefixtures("nothing_starts")
def test_a_spec_that_is_not_json_names_the_file_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"connection": "es-local",\n "query": }')
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection()})

    status, out, err = run_cli(["run", str(spec), "--connections", str(connections)], capsys)

    assert status == 2
    assert out == ""
    assert str(spec) in err
    assert "not valid JSON (line 2 column" in err


@pytest.mark.usefixtures("nothing_starts")
def test_a_missing_spec_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["run", str(tmp_path / "nope.json")], capsys)

    assert status == 2
    assert "nope.json: cannot read the job spec" in err


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (a_spec(outputs={"format": "csv"}), "outputs"),
        (a_spec(output={"format": "orc"}), "output.format"),
        (a_spec(polling={"initial_seconds": 10, "max_seconds": 5}), "polling"),
        (a_spec(query={"query": "FROM x", "keep_alive": "1d"}), "query.keep_alive"),
        ({"query": {"query": "FROM x"}}, "connection"),
    ],
)
@pytest.mark.usefixtures("nothing_starts")
def test_an_invalid_spec_names_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], field: str
) -> None:
    spec_path = write_json(tmp_path / "spec.json", spec)
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection()})

    status, out, err = run_cli(["run", str(spec_path), "--connections", str(connections)], capsys)

    assert status == 2
    assert out == ""
    assert f"{spec_path}: invalid job spec" in err
    assert f"{field}:" in err


@pytest.mark.parametrize(
    ("connection", "field"),
    [
        (a_connection(base_url="ftp://nowhere"), "base_url"),
        (a_connection(auth={"type": "api_key", "apikey": SECRET}), "auth.api_key.api_key"),
        (a_connection(provider="oracle"), "provider"),
        (a_connection(extra=SECRET), "extra"),
    ],
)
@pytest.mark.usefixtures("nothing_starts")
def test_an_invalid_connection_names_the_file_and_field_but_never_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], connection: dict[str, Any], field: str
) -> None:
    spec = write_json(tmp_path / "spec.json", a_spec())
    connections = write_json(tmp_path / "connections.json", {"es-local": connection})

    status, out, err = run_cli(["run", str(spec), "--connections", str(connections)], capsys)

    assert status == 2
    assert f"{connections}: connection 'es-local' is invalid" in err
    assert field in err
    assert SECRET not in out + err


@pytest.mark.usefixtures("nothing_starts")
def test_a_connections_file_that_is_not_json_never_shows_its_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_json(tmp_path / "spec.json", a_spec())
    connections = tmp_path / "connections.json"
    connections.write_text(f'{{"es-local": {{"auth": "{SECRET}" oops}}}}')

    status, _, err = run_cli(["run", str(spec), "--connections", str(connections)], capsys)

    assert status == 2
    assert f"{connections}: the connections file is not valid JSON" in err
    assert SECRET not in err


@pytest.mark.usefixtures("nothing_starts")
def test_an_unknown_connection_name_is_reported_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_json(tmp_path / "spec.json", a_spec(connection="es-prod"))
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection()})

    status, _, err = run_cli(["run", str(spec), "--connections", str(connections)], capsys)

    assert status == 2
    assert "connection: no connection named 'es-prod'" in err
    assert "it has: es-local" in err


@pytest.mark.usefixtures("nothing_starts")
def test_without_a_connections_file_the_one_in_the_working_directory_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "connections.json", {"es-other": a_connection()})
    write_json(tmp_path / "spec.json", a_spec())

    status, _, err = run_cli(["run", "spec.json"], capsys)

    assert status == 2
    assert "no connection named 'es-local' in connections.json (it has: es-other)" in err


@pytest.mark.usefixtures("nothing_starts")
def test_without_any_connections_file_the_error_says_how_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "spec.json", a_spec())

    status, _, err = run_cli(["run", "spec.json"], capsys)

    assert status == 2
    assert "no --connections FILE given and no ./connections.json here" in err


# --- the whole run, on the local stack against the ES|QL emulator -------------------------------


@pytest.fixture
def emulator() -> Iterator[EsqlEmulator]:
    with EsqlEmulator(api_key=SECRET) as running:
        running.config.query_seconds = 0
        yield running


def test_run_json_prints_the_manifest_and_copies_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: EsqlEmulator
) -> None:
    # Given a spec, a connections file for the emulator and an output directory
    spec = write_json(
        tmp_path / "spec.json",
        a_spec(job_id="cli-e2e", output={"format": "csv", "compression": "gzip", "prefix": "exports/"}),
    )
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection(emulator.base_url)})
    out_dir = tmp_path / "out"

    # When the job runs with --json
    status, out, err = run_cli(
        ["run", str(spec), "--connections", str(connections), "--out", str(out_dir), "--json"], capsys
    )

    # Then stdout is exactly the manifest, and the objects landed under their S3 keys
    assert status == 0, err
    manifest = json.loads(out)
    assert manifest["status"] == "SUCCEEDED"
    assert (manifest["job_id"], manifest["row_count"], manifest["format"]) == ("cli-e2e", 3, "csv")
    keys = [entry["key"] for entry in manifest["objects"]]
    assert keys
    assert all(key.startswith("exports/dt=") and "/cli-e2e/" in key for key in keys)
    for key in keys:
        assert (out_dir / key).is_file()
    manifest_files = list(out_dir.glob("exports/dt=*/cli-e2e/_manifest.json"))
    assert [json.loads(path.read_text()) for path in manifest_files] == [manifest]
    # progress went to stderr, and no secret anywhere
    assert "done" in err
    assert SECRET not in out + err


def test_run_registers_a_parquet_result_in_the_catalog_the_spec_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: EsqlEmulator
) -> None:
    # Given a Parquet spec that registers its result in a catalog table
    output = {"format": "parquet", "catalog": {"database": "local_db", "table": "departments"}}
    spec = write_json(tmp_path / "spec.json", a_spec(job_id="cli-parquet", output=output))
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection(emulator.base_url)})
    # When it runs (the local stack's CatalogDatabase is the spec's, made for it)
    status, out, err = run_cli(
        ["run", str(spec), "--connections", str(connections), "--out", str(tmp_path / "out")], capsys
    )
    # Then it prints the typed first rows, the table and the job's partition as Glue holds them
    assert status == 0, err
    assert "(parquet, snappy)" in out
    assert "first rows of part-00000.parquet (1 row group(s)):" in out
    assert "  catalog     local_db.departments (" in out
    assert re.search(r"partition   dt=\d{4}-\d\d-\d\d, job_id=cli-parquet at s3://\S+/cli-parquet/", out)
    assert "in Athena   SELECT * FROM local_db.departments WHERE dt = '" in out


def test_run_json_reports_a_failed_job_as_one_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: EsqlEmulator
) -> None:
    spec = write_json(
        tmp_path / "spec.json", a_spec(query={"query": "FROM employees | WHERE no_such_field > 1"})
    )
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection(emulator.base_url)})

    status, out, err = run_cli(
        ["run", str(spec), "--connections", str(connections), "--out", str(tmp_path / "out"), "--json"],
        capsys,
    )

    assert status == 1
    failure = json.loads(out)
    assert failure["status"] == "FAILED"
    assert failure["error"] == "UpstreamQueryFailed"
    assert "no_such_field" in failure["cause"]
    assert not (tmp_path / "out").exists()
    assert SECRET not in out + err


def test_run_prints_a_summary_with_the_first_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: EsqlEmulator
) -> None:
    spec = write_json(
        tmp_path / "spec.json",
        a_spec(query={"query": "FROM employees | KEEP emp_no | SORT emp_no | LIMIT 2"}),
    )
    connections = write_json(tmp_path / "connections.json", {"es-local": a_connection(emulator.base_url)})

    status, out, _ = run_cli(
        ["run", str(spec), "--connections", str(connections), "--out", str(tmp_path / "out")], capsys
    )

    assert status == 0
    assert "SUCCEEDED" in out
    assert "s3://query-relay-local-results-bucket/results/dt=" in out
    assert "first rows of part-00000.jsonl:" in out
    assert '{"emp_no":10001}' in out
    assert '{"emp_no":10002}' in out


# --- emulate ---------------------------------------------------------------------------------------


def test_emulate_serves_until_interrupted(tmp_path: Path) -> None:
    # Given the emulator started from the command line on a free port
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "query_relay_local.cli",
            "emulate",
            "esql",
            "--port",
            "0",
            "--api-key",
            SECRET,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        base_url = first_line.split()[3]
        # When a client asks it something, with and without the key
        with_key = httpx.get(f"{base_url}/", headers={"Authorization": f"ApiKey {SECRET}"})
        without_key = httpx.get(f"{base_url}/")
    finally:
        # Then Ctrl-C stops it cleanly
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)

    assert first_line.startswith("ES|QL emulator at http://127.0.0.1:")
    assert with_key.status_code == 200
    assert without_key.status_code == 401
    assert process.returncode == 0, err


# --- demo ------------------------------------------------------------------------------------------


def test_demo_runs_every_sample_job_and_shows_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(["demo", "--out", str(tmp_path)], capsys)

    demo_jobs = [job for upstream in UPSTREAMS.values() for job in upstream.demo_jobs]
    assert status == 0, err
    assert out.count("SUCCEEDED") == len(demo_jobs) >= len(UPSTREAMS)
    for upstream in UPSTREAMS.values():
        assert f"({upstream.name} via {upstream.name}-demo" in out
    assert "first rows of part-00000.jsonl:" in out
    assert "first rows of part-00000.csv.gz:" in out
    assert "first rows of part-00000.parquet (1 row group(s)):" in out
    assert (
        "  catalog     demo.employees (emp_no int, first_name string, salary int, hire_date timestamp)" in out
    )
    assert "poll #1" in err
    assert len(list(tmp_path.glob("results/dt=*/*/_manifest.json"))) == len(demo_jobs)
    # and the schedules: three backfilled runs of a per-minute schedule and a fired hourly one, each
    # query carrying its own window
    windows = re.findall(r"(demo-[a-z-]+)-\S+: its query's window (\S+) \.\. (\S+)", out)
    assert [name for name, _, _ in windows] == ["demo-every-minute"] * 3 + ["demo-hourly"]
    minutes = [(datetime.fromisoformat(until) - datetime.fromisoformat(since)) for _, since, until in windows]
    assert minutes == [timedelta(minutes=1)] * 3 + [timedelta(hours=1)]
    assert [until for _, _, until in windows[:2]] == [since for _, since, _ in windows[1:3]]  # back to back


# --- progress lines --------------------------------------------------------------------------------


def _exited(state: str, job: dict[str, Any]) -> Any:
    return {
        "type": "TaskStateExited",
        "stateExitedEventDetails": {"name": state, "output": json.dumps({"job": job})},
    }


def test_progress_says_when_a_job_waits_for_a_slot_and_when_it_continues_as_a_new_execution() -> None:
    progress = cli.Progress(io.StringIO())
    queued = progress.describe(_exited("Submit", {"status": "QUEUED", "wait_seconds": 4}))
    continued = progress.describe(
        _exited("ContinueAsNew", {"status": "RUNNING", "next_execution": "job-1.1"})
    )
    succeeded: Any = {"type": "ExecutionSucceeded"}
    ended = progress.describe(succeeded)  # the old execution, not the job
    assert queued == "every max_concurrent slot of the connection is taken: next try in 4s"
    assert continued == "history budget spent: continuing as execution job-1.1"
    assert ended is None
    progress.describe(_exited("Fetch", {"status": "DONE"}))
    assert progress.describe(succeeded) == "done"


def test_progress_follows_a_parallel_fetch_branch_by_branch() -> None:
    progress = cli.Progress(io.StringIO())
    branches = [{"index": n, "first": n, "end": n + 1} for n in range(3)]
    plan = {"branches": branches, "max_parallel": 2}
    split = progress.describe(_exited("Fetch", {"status": "SPLIT", "fetch_plan": plan}))
    branch: Any = {
        "type": "TaskStateExited",
        "stateExitedEventDetails": {
            "name": "FetchBranch",
            "output": json.dumps({"job": {"status": "SPLIT", "fetch_plan": plan}, "branch": branches[2]}),
        },
    }
    going_on: Any = {
        "type": "TaskStateExited",
        "stateExitedEventDetails": {
            "name": "FetchBranch",
            "output": json.dumps({"job": {"status": "FETCHING"}, "branch": branches[0]}),
        },
    }
    assert split == "result split into 3 branches: fetching 2 at a time (a Map state, a Fetch per branch)"
    assert (
        progress.describe(going_on)
        == "branch 0: stopped after a whole part before its time ran out, going on"
    )
    assert progress.describe(branch) == "branch 2 landed (1 of 3)"
    written = progress.describe(_exited("WriteManifest", {"status": "DONE", "result": {"row_count": 9}}))
    assert written == "manifest written: 9 rows"
