"""Each moto bug that query_relay_local.moto_fixes fixes still reproduces on the pinned moto.

Each scenario runs plain moto, without the fixes, in a fresh interpreter (the fixes are applied
process-wide once a local stack has started). When one of these fails, moto has fixed the bug:
drop the fix and this test. The fixed behaviour itself is tested through the local stack
(tests/unit/test_local_stack.py, tests/integration).

fix_stop_execution has no scenario here: moto's bug shows only while a task runs (a Wait state is
interrupted at once), which plain moto cannot run without the local stack's Lambda runtime; a
Wait-based scenario passed or failed with the machine's load.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import moto

from query_relay_local.moto_fixes import MOTO_VERSION

STEP_FUNCTIONS = """
import json, time, boto3
from moto import mock_aws
with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    role = "arn:aws:iam::123456789012:role/r"
"""


def run_plain_moto(script: str) -> str:
    """The last line the script prints, run in a new interpreter on plain moto."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_the_fixes_are_for_the_installed_moto() -> None:
    assert moto.__version__ == MOTO_VERSION


def test_moto_still_drops_the_renaming_of_start_execution_parameters() -> None:
    # getmoto/moto#10076: a states:startExecution task fails with KeyError 'StateMachineArn'
    last = run_plain_moto(
        STEP_FUNCTIONS
        + """
    pass_only = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    child = sfn.create_state_machine(name="child", definition=json.dumps(pass_only), roleArn=role)
    task = {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution", "End": True,
            "Parameters": {"StateMachineArn": child["stateMachineArn"], "Input": {}}}
    parent = sfn.create_state_machine(
        name="parent", roleArn=role, definition=json.dumps({"StartAt": "S", "States": {"S": task}}))
    arn = sfn.start_execution(stateMachineArn=parent["stateMachineArn"], input="{}")["executionArn"]
    for _ in range(100):
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            break
        time.sleep(0.1)
    print(described["status"], described.get("cause"))
"""
    )
    assert last.startswith("FAILED")
    assert "'StateMachineArn'" in last


def test_moto_still_lets_two_conditional_writes_both_win() -> None:
    # AWS: a conditional PutItem is atomic; moto's threaded server reads, checks, then writes
    last = run_plain_moto(
        """
        import time, boto3
        from concurrent.futures import ThreadPoolExecutor
        from moto.dynamodb.models import table
        from moto.server import ThreadedMotoServer
        parse = table.get_filter_expression
        def slow(*args, **kwargs):  # widens the window between the read and the write
            time.sleep(0.05)
            return parse(*args, **kwargs)
        table.get_filter_expression = slow
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=f"http://{host}:{port}",
                              aws_access_key_id="k", aws_secret_access_key="s")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        def claim(n):
            try:
                client.put_item(TableName="t", Item={"pk": {"S": "x"}, "n": {"N": str(n)}},
                                ConditionExpression="attribute_not_exists(pk)")
                return True
            except client.exceptions.ConditionalCheckFailedException:
                return False
        with ThreadPoolExecutor(max_workers=10) as pool:
            won = list(pool.map(claim, range(10)))
        server.stop()
        print(won.count(True))
        """
    )
    assert int(last) > 1


def test_moto_still_takes_a_glue_update_of_a_stale_table_version() -> None:
    # fix_glue_table_versions: AWS refuses it (ConcurrentModificationException)
    last = run_plain_moto(
        """
        import boto3
        from moto import mock_aws
        with mock_aws():
            glue = boto3.client("glue", region_name="us-east-1")
            glue.create_database(DatabaseInput={"Name": "db"})
            glue.create_table(DatabaseName="db", TableInput={"Name": "t"})
            version = glue.get_table(DatabaseName="db", Name="t")["Table"]["VersionId"]
            glue.update_table(DatabaseName="db", TableInput={"Name": "t"}, VersionId=version)
            glue.update_table(DatabaseName="db", TableInput={"Name": "t"}, VersionId=version)
            print("stale version taken")
        """
    )
    assert last == "stale version taken"
