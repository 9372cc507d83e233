"""Connections live in Secrets Manager as ``<prefix><name>``, read through Powertools parameters
(cached per Lambda container). Locally the same secrets are served by the emulated Secrets
Manager, so there is one code path."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError

from query_relay.exceptions import ConnectionNotFound, InvalidConnection
from query_relay.models import Connection, parse_connection
from query_relay.settings import get_settings


def load_connection(name: str) -> Connection:
    settings = get_settings()
    secret_name = f"{settings.connection_secret_prefix}{name}"
    try:
        document: Any = parameters.get_secret(
            secret_name, transform="json", max_age=settings.connection_cache_seconds
        )
    except parameters.exceptions.TransformParameterError:
        raise InvalidConnection(f"connection {name!r} is not a JSON document") from None
    except parameters.exceptions.GetParameterError as error:
        # Powertools wraps the SDK error; the original is the implicit context.
        original = error.__context__
        if (
            isinstance(original, ClientError)
            and original.response["Error"]["Code"] == "ResourceNotFoundException"
        ):
            raise ConnectionNotFound(f"connection {name!r} not found (no secret {secret_name!r})") from None
        raise
    return parse_connection(name, document)
