"""Pydantic models of the public contracts: job spec, connection, manifest (see docs/contracts.md).

Every model forbids unknown fields so that a typo is reported with the field's name instead of
being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from query_relay.exceptions import InvalidConnection, InvalidJobSpec

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"
PROVIDERS = ("esql", "looker", "veza", "snowflake", "databricks")
ProviderName = Literal["esql", "looker", "veza", "snowflake", "databricks"]
OutputFormat = Literal["jsonl", "csv", "native", "parquet"]
# gzip compresses a jsonl, csv or native part whole; in a Parquet part every compression is the
# codec of its column chunks (the file itself stays readable in place).
Compression = Literal["none", "gzip", "snappy", "zstd"]
PARQUET_CODECS = ("snappy", "zstd")
MAX_PROBLEMS_DESCRIBED = 20


class StrictModel(BaseModel):
    """Our own documents: unknown fields refused, types strict (no "10" or true for a number)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# A query's text (ES|QL's query, a SQL statement): at least one character that is not blank.
QueryText = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class QueryModel(BaseModel):
    """A provider's ``query``: unknown fields refused, but types as lax as the vendor's own API
    (Looker writes ``limit`` as "500", Veza's Query Builder ``page_size`` as "250")."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- job spec ------------------------------------------------------------------------------------


# Athena's names: lower-case letters, digits and underscores.
CATALOG_NAME_PATTERN = r"^[a-z0-9_]{1,255}$"


class CatalogSpec(StrictModel):
    """Where a landed result is registered in the Glue Data Catalog (query_relay.catalog)."""

    database: str = Field(pattern=CATALOG_NAME_PATTERN)
    table: str = Field(pattern=CATALOG_NAME_PATTERN)
    # A column whose type changes (or a format that changes) fails the job unless this is true:
    # earlier partitions keep their own types, which a reader of the whole table may not follow.
    allow_type_changes: bool = False


class OutputSpec(StrictModel):
    format: OutputFormat = "jsonl"
    compression: Compression = "none"  # snappy for parquet when not given
    prefix: str = Field(default="results/", max_length=512)
    catalog: CatalogSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _parquet_compresses_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") == "parquet" and "compression" not in data:
            return {**data, "compression": "snappy"}
        return data

    @field_validator("compression")
    @classmethod
    def _codec_suits_format(cls, value: str, info: ValidationInfo) -> str:
        output_format = info.data.get("format")  # validated first: it is declared first
        if value in PARQUET_CODECS and output_format not in (None, "parquet"):
            raise ValueError(f"{value!r} is a Parquet codec; format {output_format!r} takes 'none' or 'gzip'")
        return value

    @field_validator("catalog")
    @classmethod
    def _catalog_has_a_table_format(
        cls, value: CatalogSpec | None, info: ValidationInfo
    ) -> CatalogSpec | None:
        if value is not None and info.data.get("format") == "native":
            raise ValueError("a native result has no table format to register; use jsonl, csv or parquet")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_key_prefix(cls, value: str) -> str:
        if value.startswith("/") or {"..", "."} & set(value.split("/")) or "//" in value:
            # '.' and empty segments are normalised away by HTTP clients: presigned links would 404
            raise ValueError("must be a relative S3 key prefix (no leading '/', no '.', '..' or '//')")
        if value and not value.endswith("/"):
            value += "/"
        if not re.fullmatch(r"[A-Za-z0-9!_.*'()/=-]*", value):
            raise ValueError("may hold only letters, digits, '/' and !_.*'()=-")
        return value


class PollingSpec(StrictModel):
    initial_seconds: int = Field(default=1, ge=1, le=3600)
    max_seconds: int = Field(default=60, ge=1, le=3600)
    timeout_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> PollingSpec:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("max_seconds must be >= initial_seconds")
        return self


# A schedule's query may hold these as whole string values (query_relay.windows).
PLACEHOLDERS = ("scheduled_time", "window_start", "window_end")
PLACEHOLDER_TOKENS = {f"{{{{{name}}}}}": name for name in PLACEHOLDERS}


def query_strings(value: Any, path: str = "query") -> Iterator[tuple[str, str]]:
    """Every string value of a query, with its path (``query.params[0].start``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from query_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from query_strings(item, f"{path}[{index}]")


def spliced_placeholders(query: Any) -> list[str]:
    """The paths of strings that hold a placeholder among other text: it would be spliced into
    query text, which it never is (only a whole value is replaced)."""
    return [
        path
        for path, value in query_strings(query)
        if value not in PLACEHOLDER_TOKENS and any(token in value for token in PLACEHOLDER_TOKENS)
    ]


class ScheduledRun(StrictModel):
    """Which run of which schedule a job is: set by the schedule's target input (Scheduler fills in
    the scheduled time) or by a backfill; gives the query's placeholders their values."""

    schedule: str = Field(min_length=1, max_length=64)
    scheduled_time: AwareDatetime = Field(strict=False)  # ISO 8601 text, as Scheduler writes it
    expression: str = Field(min_length=1, max_length=256)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)


class JobSpec(StrictModel):
    job_id: str | None = Field(default=None, pattern=JOB_ID_PATTERN)
    connection: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    query: dict[str, Any]
    output: OutputSpec = OutputSpec()
    polling: PollingSpec = PollingSpec()
    scheduled_run: ScheduledRun | None = None

    @field_validator("query")
    @classmethod
    def _placeholders_stand_whole(cls, value: dict[str, Any]) -> dict[str, Any]:
        spliced = spliced_placeholders(value)
        if spliced:
            raise ValueError(
                f"{spliced[0]} holds a placeholder among other text; {{{{scheduled_time}}}}, "
                "{{window_start}} and {{window_end}} stand only as a whole value (a parameter, a "
                "binding, a filter value), never inside query text"
            )
        return value


# --- connections ---------------------------------------------------------------------------------


def _given(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


Secret = Annotated[SecretStr, AfterValidator(_given)]


class ApiKeyAuth(StrictModel):
    type: Literal["api_key"]
    api_key: Secret


class BasicAuth(StrictModel):
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: Secret


class BearerAuth(StrictModel):
    type: Literal["bearer"]
    token: Secret
    # What the token is, for an upstream that must be told (Snowflake: an OAuth access token, the
    # default, or a programmatic access token). Providers that take no token type refuse it.
    token_type: Literal["OAUTH", "PROGRAMMATIC_ACCESS_TOKEN"] | None = None


class ClientCredentialsAuth(StrictModel):
    type: Literal["client_credentials"]
    client_id: str = Field(min_length=1)
    client_secret: Secret


class KeyPairAuth(StrictModel):
    """Snowflake key-pair authentication: the user's RSA private key (PEM, PKCS#8 or PKCS#1,
    encrypted with ``private_key_passphrase`` or not) signs the JWTs the requests carry."""

    type: Literal["key_pair"]
    account: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    user: str = Field(min_length=1)
    private_key: Secret
    private_key_passphrase: Secret | None = None


Auth = Annotated[
    ApiKeyAuth | BasicAuth | BearerAuth | ClientCredentialsAuth | KeyPairAuth, Field(discriminator="type")
]


class Connection(StrictModel):
    provider: ProviderName
    base_url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    auth: Auth
    max_concurrent: int | None = Field(default=None, ge=1)
    # How many Fetch invocations at once may read a result its upstream splits (Snowflake
    # partitions, Databricks chunks); 1 reads every result in one Fetch. At most 40 (an Inline Map's).
    max_parallel_fetch: int = Field(default=8, ge=1, le=40)
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    verify_tls: bool = True
    # Lets base_url resolve to a private network (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7),
    # e.g. a cluster inside the VPC. Loopback, link-local (the metadata address) and the like stay
    # forbidden in AWS whatever this says (query_relay.upstream.address).
    allow_private_network: bool = False

    @field_validator("base_url")
    @classmethod
    def _no_credentials_and_no_trailing_slash(cls, value: str) -> str:
        # httpx would send them as Basic auth in place of the connection's own (and print them).
        if "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("must not carry credentials (user:password@host): give them in auth")
        try:
            urlsplit(value).port  # noqa: B018 - raises for a port out of 0..65535
            httpx.URL(value)  # what every request is built from: a host it cannot encode fails here
        except (ValueError, httpx.InvalidURL):
            raise ValueError("is not a usable URL (host or port)") from None
        return value.rstrip("/")


# --- results -------------------------------------------------------------------------------------


def _absent(value: object) -> bool:
    return value is None


class Column(StrictModel):
    name: str
    type: str
    # A Snowflake FIXED column's precision and scale (its type names neither); absent elsewhere.
    precision: int | None = Field(default=None, exclude_if=_absent)
    scale: int | None = Field(default=None, exclude_if=_absent)


class ObjectEntry(StrictModel):
    key: str
    rows: int
    bytes: int
    sha256: str


class NativeUpload(StrictModel):
    """A native object's multipart upload that a Fetch left unfinished: its first ``parts`` parts
    (numbered from 1) hold the first ``bytes`` stored bytes, whose sha256 is ``sha256``. The next
    Fetch reads the answer again, checks those bytes against it, and uploads the rest."""

    key: str
    upload_id: str
    parts: int
    bytes: int
    sha256: str


class Manifest(StrictModel):
    job_id: str
    connection: str
    provider: ProviderName
    upstream_id: str | None
    status: Literal["SUCCEEDED"] = "SUCCEEDED"
    format: OutputFormat
    compression: Compression
    row_count: int
    byte_count: int
    columns: list[Column]
    objects: list[ObjectEntry]
    submitted_at: datetime
    completed_at: datetime
    polls: int
    # True only when the upstream said its answer is partial and the spec opted in to land it.
    is_partial: bool = False
    # A Parquet result's columns as its parts hold them: name and Arrow type (query_relay.column_types).
    arrow_schema: list[Column] | None = Field(default=None, exclude_if=_absent)


# --- validation helpers that turn pydantic errors into our named errors --------------------------


def problem_message(problem: Mapping[str, Any]) -> str:
    """Pydantic's message for one problem, unless it quotes the rejected value (an unknown
    ``auth.type`` is quoted whole, and may be a secret pasted in the wrong field): then the rule
    alone, from the problem's type and context."""
    message = str(problem.get("msg", "invalid"))
    context = problem.get("ctx") or {}
    if problem.get("type") == "union_tag_invalid" and "expected_tags" in context:
        return f"must be one of {context['expected_tags']}"
    rejected = problem.get("input")
    said = rejected.values() if isinstance(rejected, dict) else [rejected]
    quoted = (str(value) for value in said if isinstance(value, str | int | float) and str(value))
    if any(value in message for value in quoted):
        return f"is not allowed here ({problem.get('type', 'invalid')})"
    return message


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field path: 'output.format: Input should be ...'.
    At most ``MAX_PROBLEMS_DESCRIBED``: a spec with thousands of unknown fields must not make an
    error message (which travels in the execution's state) thousands of lines long."""
    problems = error.errors(include_url=False)
    lines = []
    for problem in problems[:MAX_PROBLEMS_DESCRIBED]:
        location = prefix + ".".join(str(part) for part in problem["loc"]) or "(root)"
        lines.append(f"{location}: {problem_message(problem)}")
    if len(problems) > MAX_PROBLEMS_DESCRIBED:
        lines.append(f"and {len(problems) - MAX_PROBLEMS_DESCRIBED} more problems")
    return "; ".join(lines)


# No document of ours nests deeper than this: a deeper one is refused before anything recurses on
# it (validation, serialization), instead of failing with RecursionError.
MAX_NESTING = 64


def nesting_depth(document: Any) -> int:
    """How deep ``document`` (decoded JSON) nests; 0 for a scalar. Iterative: any depth is safe."""
    deepest, pending = 0, [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:  # past the cap the answer is known: stop walking
            pending.extend((child, depth + 1) for child in children)
    return deepest


def too_deep(document: Any) -> str | None:
    """The problem with a document nested deeper than MAX_NESTING, if it is."""
    if nesting_depth(document) > MAX_NESTING:
        return f"(root): nested deeper than {MAX_NESTING} levels"
    return None


def parse_job_spec(document: Any) -> JobSpec:
    if problem := too_deep(document):
        raise InvalidJobSpec(f"invalid job spec: {problem}")
    try:
        return JobSpec.model_validate(document)
    except ValidationError as error:
        raise InvalidJobSpec(f"invalid job spec: {describe_validation_error(error)}") from None


def parse_connection(name: str, document: Any) -> Connection:
    if problem := too_deep(document):
        raise InvalidConnection(f"connection {name!r} is invalid: {problem}")
    try:
        return Connection.model_validate(document)
    except ValidationError as error:
        # Only field paths and messages: never the input, which may hold a secret.
        raise InvalidConnection(
            f"connection {name!r} is invalid: {describe_validation_error(error)}"
        ) from None
