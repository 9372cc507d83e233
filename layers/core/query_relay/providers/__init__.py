"""Provider registry: connection.provider -> Provider class, imported only when used so a
handler's cold start loads just the upstream it talks to."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError

from query_relay.exceptions import InvalidConnection, InvalidJobSpec
from query_relay.models import Connection, ProviderName, describe_validation_error
from query_relay.providers.base import (
    FetchedResult,
    NativeResult,
    Piece,
    PollStatus,
    Provider,
    Submission,
    SubmitOptions,
    TabularResult,
)

# name -> "module:Class"; a new upstream adds one line here.
PROVIDERS: dict[str, str] = {
    "esql": "query_relay.providers.esql:EsqlProvider",
    "looker": "query_relay.providers.looker:LookerProvider",
    "veza": "query_relay.providers.veza:VezaProvider",
    "snowflake": "query_relay.providers.snowflake:SnowflakeProvider",
    "databricks": "query_relay.providers.databricks:DatabricksProvider",
}


def provider_class(name: ProviderName | str) -> type[Provider[Any, Any]]:
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise InvalidConnection(
            f"provider {name!r} is not available; available: {', '.join(sorted(PROVIDERS))}"
        ) from None
    module_name, class_name = target.split(":")
    cls: type[Provider[Any, Any]] = getattr(importlib.import_module(module_name), class_name)
    return cls


def validate_query(provider_name: ProviderName | str, query: dict[str, Any]) -> BaseModel:
    """The job's ``query`` object checked against the provider's model; errors name ``query.<field>``."""
    try:
        return provider_class(provider_name).query_model.model_validate(query)
    except ValidationError as error:
        problems = describe_validation_error(error, prefix="query.")
        raise InvalidJobSpec(f"invalid job spec ({provider_name} query): {problems}") from None


def validate_job(connection_name: str, connection: Connection, query: dict[str, Any]) -> BaseModel:
    """Everything knowable before a job starts, checked the same way by the CLI, the API and
    Submit: the connection suits its provider (auth type), and the query validates."""
    provider_class(connection.provider).check_connection(connection_name, connection)
    return validate_query(connection.provider, query)


def open_provider(connection_name: str, connection: Connection) -> Provider[Any, Any]:
    return provider_class(connection.provider)(connection_name, connection)


__all__ = [
    "PROVIDERS",
    "FetchedResult",
    "NativeResult",
    "Piece",
    "PollStatus",
    "Provider",
    "Submission",
    "SubmitOptions",
    "TabularResult",
    "open_provider",
    "provider_class",
    "validate_job",
    "validate_query",
]
