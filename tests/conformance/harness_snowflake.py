"""The conformance suite's view of the Snowflake provider and its emulator.

The connection signs key-pair JWTs (the auth most Snowflake service users have). Submit's faults
go to ``POST /api/v2/statements``, Poll's to the statement's status, Fetch's to the later
partitions (the ResultSet of partition 0 is the status call), Cancel's to ``.../cancel``. The
failing query names a table the warehouse does not have: Snowflake answers 422 with SQL state
42S02. The expected rows come from the emulator's warehouse, typed as the README's Snowflake
table says, independently of the provider's converters (``as_landed``).
"""

from __future__ import annotations

import base64
import hashlib
import time
from functools import cache
from typing import Any, ClassVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from query_relay_local.emulators import warehouse
from query_relay_local.emulators.snowflake import SnowflakeEmulator

from .harnesses import ProviderHarness, Step

SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER = "conformance", "relay"
OK_STATEMENT = (
    "SELECT id, name, department, salary, hired, active, updated_at FROM employees WHERE id <= ? ORDER BY id"
)


@cache
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signed_jwt(account: str, user: str, key: rsa.RSAPrivateKey) -> str:
    """A key-pair JWT as Snowflake's documentation builds one (for raw requests in tests)."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    qualified = f"{account.upper()}.{user.upper()}"
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode()
    now = int(time.time())
    claims = {"iss": f"{qualified}.{fingerprint}", "sub": qualified, "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm="RS256")


def as_landed(column: warehouse.WColumn, value: Any) -> Any:
    """How a warehouse value lands through Snowflake (README, "Snowflake queries"): Snowflake's
    times and timestamps carry 9 fraction digits, a decimal of precision <= 15 is a float, binary
    is upper-case hex."""
    if value is None:
        return None
    kind = column.type
    if kind == "decimal":
        return float(value) if (column.precision or 38) <= 15 else str(value)
    if kind == "date":
        return value.isoformat()
    if kind == "time":
        return value.strftime("%H:%M:%S.%f") + "000"
    if kind in ("timestamp", "timestamp_tz"):
        text = value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000"
        if kind == "timestamp_tz":
            minutes = int(value.utcoffset().total_seconds() // 60)
            text += f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        return text
    if kind == "binary":
        return value.hex().upper()
    return value


class SnowflakeHarness(ProviderHarness):
    provider = "snowflake"
    cancelled_state = "canceled"
    unknown_task_id = "01b2c3d4-0000-4a5b-0000-00000000abcd"
    ok_query: ClassVar[dict[str, Any]] = {
        "statement": OK_STATEMENT,
        "bindings": {"1": {"type": "FIXED", "value": "20"}},
        "warehouse": "COMPUTE_WH",
    }
    failing_query: ClassVar[dict[str, Any]] = {"statement": "SELECT * FROM no_such_table"}
    _steps: ClassVar[dict[Step, str]] = {
        "submit": "submit",
        "poll": "status",
        "fetch": "partition",
        "cancel": "cancel",
    }

    def emulator(self) -> SnowflakeEmulator:
        return SnowflakeEmulator(
            account=SNOWFLAKE_ACCOUNT, user=SNOWFLAKE_USER, public_key_pem=public_key_pem(private_key())
        )

    def connection(self, emulator: SnowflakeEmulator, *, valid: bool = True) -> dict[str, Any]:
        key = private_key() if valid else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return {
            "provider": "snowflake",
            "base_url": emulator.base_url,
            "auth": {
                "type": "key_pair",
                "account": SNOWFLAKE_ACCOUNT,
                "user": SNOWFLAKE_USER,
                "private_key": private_key_pem(key),
            },
        }

    def expected_rows(self, emulator: SnowflakeEmulator) -> list[dict[str, Any]]:
        result = warehouse.execute(OK_STATEMENT, [20])
        return [
            {
                column.name.upper(): as_landed(column, value)
                for column, value in zip(result.columns, row, strict=True)
            }
            for row in result.rows
        ]

    def set_query_seconds(self, emulator: SnowflakeEmulator, seconds: float) -> None:
        emulator.config.query_seconds = seconds

    def fail_next(
        self,
        emulator: SnowflakeEmulator,
        step: Step,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        if step == "fetch":
            emulator.config.partition_rows = 5  # so that Fetch asks for later partitions
        emulator.fail_next(self._steps[step], status, times=times, retry_after=retry_after)

    def split_results(self, emulator: Any, rows: int) -> None:
        emulator.config.partition_rows = rows

    def task_state(self, emulator: SnowflakeEmulator, upstream_id: str) -> str | None:
        return emulator.statement_states().get(upstream_id)
