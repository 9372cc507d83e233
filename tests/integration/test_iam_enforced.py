"""The local stack enforces the IAM that template.yaml grants, as AWS would (query_relay_local.iam).

Jobs run here with every handler signing as its function's execution role (SAM's translation of
the template), the state machine's calls as its role and schedule deliveries as the Scheduler role.
So a permission missing from the template fails here, with AWS's error, before a deploy does: a
copy of the template with one grant taken away makes the job fail with AccessDenied in its cause.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.iam import Principal
from query_relay_local.stack import LocalStack
from query_relay_local.template import DEFAULT_TEMPLATE_PATH

from .conftest import ES_CONNECTION, esql_connection, run_job
from .landed import landed_manifest

SPEC: dict[str, Any] = {
    "connection": ES_CONNECTION,
    "query": {"query": "FROM employees | STATS n = COUNT(*) BY department | SORT department"},
    "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
}
REPOSITORY = DEFAULT_TEMPLATE_PATH.parent


def template_without(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of template.yaml with ``old`` (which must occur once) replaced by ``new``, beside
    links to the code it names, so that the local stack runs it like the real one."""
    text = DEFAULT_TEMPLATE_PATH.read_text()
    assert text.count(old) == 1, f"template.yaml no longer holds exactly one {old!r}"
    for name in ("functions", "layers", "statemachine"):
        (tmp_path / name).symlink_to(REPOSITORY / name)
    copy = tmp_path / "template.yaml"
    copy.write_text(text.replace(old, new))
    return copy


def test_a_job_lands_under_the_iam_the_template_grants(stack: LocalStack) -> None:
    # Given the local stack with IAM enforced, from the unchanged template
    assert stack.enforce_iam
    # When a job runs (its Submit, Poll and Fetch each under their own role)
    final, _ = run_job(stack, {**SPEC, "job_id": "under-iam"})
    # Then it lands
    assert final["status"] == "SUCCEEDED", final.get("cause")
    assert landed_manifest(stack, final)["row_count"] > 0


def test_a_principal_can_do_only_what_its_role_grants(stack: LocalStack) -> None:
    # Given the Poll function's role, which may read connection secrets and nothing else
    poll = stack.iam.for_function("PollFunction")
    assert poll is not None
    # When it tries to write to the results bucket, or to start an execution
    with pytest.raises(ClientError) as s3_refusal:
        poll.client("s3", stack.endpoint_url).put_object(Bucket=stack.bucket, Key="x", Body=b"x")
    with pytest.raises(ClientError) as sfn_refusal:
        poll.client("stepfunctions", stack.endpoint_url).start_execution(
            stateMachineArn=stack.state_machine_arn, name="not-allowed", input="{}"
        )
    # Then AWS's errors come back, naming the action (and for JSON services the resource)
    assert s3_refusal.value.response["Error"]["Code"] == "AccessDenied"
    error = sfn_refusal.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "states:StartExecution on resource: " + stack.state_machine_arn in error["Message"]
    assert "assumed-role/PollFunctionRole" in error["Message"]
    # And unknown keys are refused as AWS refuses them
    stranger = Principal("nobody", "AKIAUNKNOWN000000000", "not-a-secret")
    with pytest.raises(ClientError) as unknown:
        stranger.client("dynamodb", stack.endpoint_url).list_tables()
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_grant_scoped_to_another_resource_does_not_match(stack: LocalStack) -> None:
    # Given the Submit role, which may read secrets under the connection prefix only
    submit = stack.iam.for_function("SubmitFunction")
    assert submit is not None
    admin = stack.secretsmanager
    admin.create_secret(Name="elsewhere/not-a-connection", SecretString="{}")
    client = submit.client("secretsmanager", stack.endpoint_url)
    # When it reads a connection, and a secret outside the prefix
    prefix = stack.function_environment["CONNECTION_SECRET_PREFIX"]
    client.get_secret_value(SecretId=f"{prefix}{ES_CONNECTION}")
    with pytest.raises(ClientError) as refused:
        client.get_secret_value(SecretId="elsewhere/not-a-connection")
    # Then only the connection is readable
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.mark.parametrize(
    ("old", "new", "failing_call"),
    [
        # The multipart listing the writer does before anything else (the defect SAM's
        # S3CrudPolicy had): every job would fail on AWS.
        ("              - s3:ListBucketMultipartUploads\n", "", "ListMultipartUploads"),
        # Writing the parts and the manifest.
        ("              - s3:PutObject\n", "              - s3:GetObjectTagging\n", "PutObject"),
    ],
    ids=["list-multipart-uploads", "put-object"],
)  # fmt: skip
def test_a_job_fails_with_access_denied_when_the_template_takes_a_permission_away(
    tmp_path: Path, esql_emulator: EsqlEmulator, old: str, new: str, failing_call: str
) -> None:
    # Given a copy of the template with one S3 permission of the result writers taken away
    template = template_without(tmp_path, old, new)
    with LocalStack(template) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        # When a job runs
        final, _ = run_job(stack, {**SPEC, "job_id": "one-grant-short"})
        # Then it fails, and its cause says AccessDenied on the call that lacked the grant
        assert final["status"] == "FAILED"
        cause = final.get("cause") or ""
        assert "AccessDenied" in cause, cause
        assert failing_call in cause, cause
        # and nothing of the result landed
        assert [key for key in stack.keys(prefix="") if "one-grant-short" in key] == []


def test_the_state_machine_calls_lambda_as_its_own_role(tmp_path: Path, esql_emulator: EsqlEmulator) -> None:
    # Given a copy of the template whose state machine may not invoke the Poll function
    old = "        - LambdaInvokePolicy:\n            FunctionName: !Ref PollFunction\n"
    template = template_without(tmp_path, old, "")
    with LocalStack(template, parameter_overrides={"SubmitWaitSeconds": "0"}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        esql_emulator.config.query_seconds = 3
        # When a job needs a Poll
        final, history = run_job(stack, {**SPEC, "job_id": "cannot-poll"})
        # Then the Poll task fails with the Lambda error AWS gives the state machine (retried, as
        # Lambda.AWSLambdaException is, then caught), and the job fails
        assert final["status"] == "FAILED"
        failures = [
            event["lambdaFunctionFailedEventDetails"]
            for event in history
            if event["type"] == "LambdaFunctionFailed"
        ]
        assert failures, [event["type"] for event in history]
        assert {failure["error"] for failure in failures} == {"Lambda.AWSLambdaException"}
        pattern = (
            r"assumed-role/QueryStateMachineRole/.* is not authorized to perform: lambda:InvokeFunction on "
            r"resource: arn:aws:lambda:[^ ]+:function:PollFunction .*Error Code: AccessDeniedException"
        )
        assert all(re.search(pattern, failure["cause"]) for failure in failures), failures


def test_a_schedule_is_delivered_as_the_scheduler_role(tmp_path: Path, esql_emulator: EsqlEmulator) -> None:
    # Given a copy of the template whose Scheduler role may not start executions
    old = "                Action: states:StartExecution\n                Resource: !Ref QueryStateMachine\n"
    template = template_without(
        tmp_path,
        old,
        "                Action: states:DescribeExecution\n"
        "                Resource: !Ref QueryStateMachine\n",
    )
    with LocalStack(template) as stack:
        scheduler = stack.client("scheduler")
        group = stack.function_environment["SCHEDULE_GROUP"]
        role = stack.iam.translated.roles["SchedulerRole"].arn
        scheduler.create_schedule(
            Name="nightly",
            GroupName=group,
            ScheduleExpression="cron(0 2 * * ? *)",
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={"Arn": stack.state_machine_arn, "RoleArn": role, "Input": json.dumps({"spec": SPEC})},
        )
        # When Scheduler delivers it
        with pytest.raises(ClientError) as refused:
            stack.deliver_schedule("nightly", "2026-11-25T02:00:00Z")
        # Then the delivery is refused, as the Scheduler role lacks states:StartExecution
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
        assert "assumed-role/SchedulerRole" in refused.value.response["Error"]["Message"]


def test_enforcement_can_be_turned_off_for_debugging(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, esql_emulator: EsqlEmulator
) -> None:
    # Given the template without the multipart permission, and QUERY_RELAY_LOCAL_IAM=off
    monkeypatch.setenv("QUERY_RELAY_LOCAL_IAM", "off")
    template = template_without(tmp_path, "              - s3:ListBucketMultipartUploads\n", "")
    with LocalStack(template) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        # When a job runs
        final, _ = run_job(stack, {**SPEC, "job_id": "iam-off"})
        # Then nothing is checked: it lands (as it would NOT on AWS)
        assert not stack.enforce_iam
        assert final["status"] == "SUCCEEDED"


def test_a_presigned_link_is_checked_as_its_signer(stack: LocalStack) -> None:
    # Given an object, and links to it signed by the API function's role (which may read results)
    # and by the Poll function's role (which may not)
    stack.s3.put_object(Bucket=stack.bucket, Key="results/a.jsonl", Body=b'{"n": 1}\n')
    api, poll = stack.iam.for_function("ApiFunction"), stack.iam.for_function("PollFunction")
    assert api is not None
    assert poll is not None

    def link(principal: Principal, seconds: int = 60) -> str:
        client = principal.client("s3", stack.endpoint_url, config=Config(signature_version="s3v4"))
        params = {"Bucket": stack.bucket, "Key": "results/a.jsonl"}
        return str(client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds))

    good = link(api)
    # When each is followed, and the good one altered or stripped of its signature
    answers = {
        "api": httpx.get(good),
        "poll": httpx.get(link(poll)),
        "tampered": httpx.get(good.replace("X-Amz-Signature=", "X-Amz-Signature=0")),
        "anonymous": httpx.get(good.partition("?")[0]),
    }
    # Then only the API role's untouched link downloads; the others are refused as S3 refuses them
    assert answers["api"].status_code == 200
    assert answers["api"].content == b'{"n": 1}\n'
    assert {name: answer.status_code for name, answer in answers.items() if name != "api"} == {
        "poll": 403,
        "tampered": 403,
        "anonymous": 403,
    }
    assert "AccessDenied" in answers["poll"].text
    assert "SignatureDoesNotMatch" in answers["tampered"].text
