"""The ``query`` object of a Veza job: an assessment query spec, and the check that it fits in
the job state that follows its pages."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from query_relay.models import QueryModel

# The spec rides in the execution state (to ask for later pages); keep it far below the 256 KiB
# Step Functions allows, as the job spec itself is there too.
SPEC_STATE_LIMIT_BYTES = 64 * 1024


class VezaQuery(QueryModel):
    """The assessment query spec (Veza's ``GetAssessmentQuerySpecResultRequest``). Nested objects
    are Veza's own and pass through as given. ``page_token`` belongs to the provider, which follows
    the pages itself, so it is rejected here as an unknown field."""

    source_node_types: dict[str, Any]
    query_type: str | None = None
    relates_to_exp: dict[str, Any] | None = None
    access_filter: dict[str, Any] | None = None
    node_relationship_type: str | None = None
    result_value_type: str | None = None
    include_nodes: bool | None = None
    include_sub_permissions: bool | None = None
    include_permissions_summary: bool | None = None
    include_all_source_tags_in_results: bool | None = None
    include_all_destination_tags_in_results: bool | None = None
    no_relation: bool | None = None
    path_summary: Any = None
    snapshot_id: str | None = None
    customized_variables: list[Any] | None = None
    properties_to_get: list[str] | None = None
    order_by: str | None = None
    result_order_by: str | None = None
    fetch_cached_results: bool | None = None
    # Deprecated in favour of relates_to_exp, but specs copied from the Query Builder carry them.
    destination_node_types: dict[str, Any] | None = None
    required_intermediate_node_types: dict[str, Any] | None = None
    avoided_intermediate_node_types: dict[str, Any] | None = None
    raw_permissions: dict[str, Any] | None = None
    effective_permissions: dict[str, Any] | None = None
    # Nodes per page (Veza may return fewer); every page of the result lands in the job.
    page_size: int | None = Field(default=None, ge=1)

    @field_validator("source_node_types")
    @classmethod
    def _names_node_types(cls, value: dict[str, Any]) -> dict[str, Any]:
        nodes = value.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise ValueError("needs 'nodes': a non-empty list of node specs")
        for position, node in enumerate(nodes):
            if (
                not isinstance(node, dict)
                or not isinstance(node.get("node_type"), str)
                or not node["node_type"]
            ):
                raise ValueError(f"nodes[{position}] needs a 'node_type' string")
        return value

    @model_validator(mode="after")
    def _fits_in_the_job_state(self) -> VezaQuery:
        size = len(json.dumps(self.request_body(), separators=(",", ":")).encode())
        if size > SPEC_STATE_LIMIT_BYTES:
            raise ValueError(
                f"the query spec is {size} bytes; at most {SPEC_STATE_LIMIT_BYTES} fit in the job state "
                "that follows its pages"
            )
        return self

    def request_body(self) -> dict[str, Any]:
        """The spec as sent: the fields given (top-level nulls left out, nested values untouched)."""
        return self.model_dump(mode="json", exclude_none=True)
