"""The Veza emulator's access graph and how an assessment query spec selects nodes from it.

The graph is generated deterministically (every value is a hash of the node's kind and number), so
the same spec gives the same nodes on every run and machine:

- identities: `OktaUser` (14), `AzureADUser` (10), `AwsIamUser` (8), `SnowflakeUser` (6);
- resources: `S3Bucket` (8), `SnowflakeTable` (10), `GithubRepository` (6);
- access: each identity holds raw permissions on 0 to 3 resources of the kinds it can reach
  (Okta users reach everything, Azure AD users S3 and GitHub, IAM users S3, Snowflake users
  Snowflake tables); some identities hold none, so "no relation" queries have answers too;
- `SyntheticUser`: as many identities without access as the emulator is configured for
  (`synthetic-0000001`, ...), generated when asked for, for large results.

What a spec can say, the subset the emulator understands (anything else it cannot honour is a 400
`InvalidArgument`, never silently ignored):

- `source_node_types.nodes[]`: `node_type` (required, must exist), `node_id`, and a
  `condition_expression` `{operator: AND|OR, not, specs: [{fn, property, value, not}],
  child_expressions: [...]}` with `fn` one of EQ, NEQ, CONTAINS, STARTS_WITH, ENDS_WITH, IN, GT,
  GTE, LT, LTE (CONTAINS / STARTS_WITH / ENDS_WITH ignore case). A property is looked up in
  `properties`, then among `id`, `type` and `risk_level`. Several node specs give their union.
- `relates_to_exp`: `{operator, not, specs: [{node_types: {nodes: [...]}, no_relation,
  raw_permissions: {values, operator}, effective_permissions: {values, operator}}],
  child_expressions}`: a source node passes a spec when it has access to (or, for an identity's
  resource, is reached by) a node matching one of `node_types.nodes`, with those permissions.
- `include_nodes: true` answers the nodes; otherwise the answer is their count.
- `result_value_type`: `SOURCE_NODES` (default; `destination_node_count` 0) or
  `SOURCE_NODES_WITH_COUNTS` (the number of related nodes the relation matched, or of all related
  nodes without `relates_to_exp`).
- Nodes come sorted by lower-cased name, then id. `permissions` / `raw_permissions` /
  `effective_permissions` list what the matched relations grant (empty without `relates_to_exp`).
- Accepted and ignored: `query_type` SOURCE_TO_DESTINATION, `node_relationship_type`,
  `access_filter`, `include_*` flags, `no_relation` (top level, deprecated), `snapshot_id`,
  `properties_to_get`, tags, ordering fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

IDENTITY_COUNTS = {"OktaUser": 14, "AzureADUser": 10, "AwsIamUser": 8, "SnowflakeUser": 6}
RESOURCE_COUNTS = {"S3Bucket": 8, "SnowflakeTable": 10, "GithubRepository": 6}
SYNTHETIC_TYPE = "SyntheticUser"
NODE_TYPES = (*IDENTITY_COUNTS, *RESOURCE_COUNTS, SYNTHETIC_TYPE)

# Which resources an identity type can hold permissions on.
_REACH = {
    "OktaUser": ("S3Bucket", "SnowflakeTable", "GithubRepository"),
    "AzureADUser": ("S3Bucket", "GithubRepository"),
    "AwsIamUser": ("S3Bucket",),
    "SnowflakeUser": ("SnowflakeTable",),
}
# Raw permission -> the effective (canonical) permission Veza maps it to.
_PERMISSIONS = {
    "S3Bucket": {
        "s3:GetObject": "DataRead",
        "s3:ListBucket": "MetadataRead",
        "s3:PutObject": "DataWrite",
        "s3:DeleteObject": "DataDelete",
        "s3:PutBucketAcl": "MetadataWrite",
    },
    "SnowflakeTable": {
        "SELECT": "DataRead",
        "INSERT": "DataWrite",
        "UPDATE": "DataWrite",
        "DELETE": "DataDelete",
        "OWNERSHIP": "MetadataWrite",
    },
    "GithubRepository": {"pull": "DataRead", "push": "DataWrite", "admin": "MetadataWrite"},
}
_FIRST = ("ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken", "radia", "linus")
_LAST = ("lovelace", "hopper", "turing", "dijkstra", "liskov", "knuth", "hamilton", "thompson", "perlman")
_DEPARTMENTS = ("engineering", "finance", "sales", "security", "support")
_RISK_LEVELS = ("LOW", "LOW", "MEDIUM", "MEDIUM", "HIGH", "CRITICAL")
_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
_AWS_ACCOUNT = "877042069677"
_SNOWFLAKE = "acme.snowflakecomputing.com"
_AZURE_TENANT = "5f1e2d3c-0000-4000-8000-00000000a11c"

SUPPORTED_RESULT_VALUE_TYPES = ("SOURCE_NODES", "SOURCE_NODES_WITH_COUNTS")


class SpecError(ValueError):
    """The spec asks for something invalid (or beyond the emulator): a 400 InvalidArgument."""


# --- the graph ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    properties: Mapping[str, Any]
    risk_level: str

    @property
    def name(self) -> str:
        return str(self.properties.get("name", ""))


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    # node id -> {related node id: raw permissions}, filled in both directions
    access: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def of_type(self, node_type: str) -> list[Node]:
        return [node for node in self.nodes.values() if node.type == node_type]

    def related(self, node: Node) -> dict[str, tuple[str, ...]]:
        return self.access.get(node.id, {})


def _hash(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _pick(options: Sequence[Any], *parts: object) -> Any:
    return options[_hash(*parts) % len(options)]


def _timestamp(*parts: object) -> str:
    day = _hash("day", *parts) % 1000  # within ~3 years from 2021-01-01
    year, day_of_year = 2021 + day // 365, day % 365
    month, day_of_month = 1 + day_of_year // 31 % 12, 1 + day_of_year % 28
    seconds = _hash("second", *parts) % 86_400
    return (
        f"{year:04d}-{month:02d}-{day_of_month:02d}T"
        f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"
    )


def _person(node_type: str, number: int) -> tuple[str, str]:
    first = _pick(_FIRST, node_type, number, "first")
    last = _pick(_LAST, node_type, number, "last")
    return first, f"{last}{number}"


def _identity(node_type: str, number: int) -> Node:
    first, last = _person(node_type, number)
    risk = _pick(_RISK_LEVELS, node_type, number, "risk")
    common: dict[str, Any] = {
        "is_active": _hash(node_type, number, "active") % 5 != 0,
        "created_at": _timestamp(node_type, number, "created"),
        "risk_level": risk,
    }
    if node_type == "OktaUser":
        email = f"{first}.{last}@acme.example"
        node_id = f"00u{_hash(node_type, number) % 16**17:017x}"
        properties = {
            "name": email,
            "email": email,
            "login": email,
            "status": "ACTIVE" if common["is_active"] else _pick(("STAGED", "SUSPENDED"), number),
            "department": _pick(_DEPARTMENTS, node_type, number, "department"),
            **common,
        }
    elif node_type == "AzureADUser":
        email = f"{first}.{last}@acme.onmicrosoft.example"
        node_id = f"{_hash(node_type, number) % 16**8:08x}-aad0-4000-8000-{number:012d}"
        properties = {
            "name": f"{first.title()} {last.title()}",
            "email": email,
            "user_principal_name": email,
            "azure_tenant_id": _AZURE_TENANT,
            "department": _pick(_DEPARTMENTS, node_type, number, "department"),
            **common,
        }
    elif node_type == "AwsIamUser":
        name = f"{first[0]}.{last}"
        node_id = f"arn:aws:iam::{_AWS_ACCOUNT}:user/{name}"
        properties = {
            "name": name,
            "aws_account_id": _AWS_ACCOUNT,
            "full_admin": _hash(node_type, number, "admin") % 4 == 0,
            "last_used_at": _timestamp(node_type, number, "used"),
            **common,
        }
    else:  # SnowflakeUser
        name = f"{first}_{last}".upper()
        node_id = f"{_SNOWFLAKE}/user/{name}"
        properties = {
            "name": name,
            "email": f"{first}.{last}@acme.example",
            "default_role": _pick(("ANALYST", "ENGINEER", "SYSADMIN"), node_type, number, "role"),
            **common,
        }
    return Node(id=node_id, type=node_type, properties=properties, risk_level=risk)


def _resource(node_type: str, number: int) -> Node:
    risk = _pick(_RISK_LEVELS, node_type, number, "risk")
    created = _timestamp(node_type, number, "created")
    if node_type == "S3Bucket":
        name = f"acme-{_pick(('logs', 'backups', 'exports', 'media'), node_type, number)}-{number:02d}"
        node_id = f"arn:aws:s3:::{name}"
        properties: dict[str, Any] = {
            "name": name,
            "region": _pick(_REGIONS, node_type, number, "region"),
            "aws_account_id": _AWS_ACCOUNT,
            "is_public": _hash(node_type, number, "public") % 4 == 0,
        }
    elif node_type == "SnowflakeTable":
        table = f"{_pick(('ORDERS', 'CUSTOMERS', 'INVOICES', 'EVENTS'), node_type, number)}_{number:02d}"
        database = _pick(("SALES", "FINANCE"), node_type, number, "database")
        node_id = f"{_SNOWFLAKE}/database/{database}/schema/PUBLIC/table/{table}"
        properties = {
            "name": table,
            "database_name": database,
            "schema_name": "PUBLIC",
            "row_count": _hash(node_type, number, "rows") % 5_000_000,
        }
    else:  # GithubRepository
        name = f"{_pick(('api', 'web', 'infra', 'docs'), node_type, number)}-{number:02d}"
        node_id = f"github.com/acme/{name}"
        properties = {
            "name": name,
            "visibility": _pick(("private", "private", "internal", "public"), node_type, number),
            "default_branch": "main",
            "archived": _hash(node_type, number, "archived") % 6 == 0,
        }
    properties.update(created_at=created, risk_level=risk)
    return Node(id=node_id, type=node_type, properties=properties, risk_level=risk)


@cache
def graph() -> Graph:
    """The emulator's whole graph (built once; never changes)."""
    built = Graph()
    for node_type, count in IDENTITY_COUNTS.items():
        for number in range(1, count + 1):
            node = _identity(node_type, number)
            built.nodes[node.id] = node
    for node_type, count in RESOURCE_COUNTS.items():
        for number in range(1, count + 1):
            node = _resource(node_type, number)
            built.nodes[node.id] = node
    for node_type in IDENTITY_COUNTS:
        for identity in built.of_type(node_type):
            _grant(built, identity)
    return built


def synthetic_node(number: int) -> Node:
    name = f"synthetic-{number:07d}"
    risk = _pick(_RISK_LEVELS, SYNTHETIC_TYPE, number)
    properties = {
        "name": name,
        "email": f"{name}@acme.example",
        "is_active": number % 7 != 0,
        "created_at": _timestamp(SYNTHETIC_TYPE, number),
        "risk_level": risk,
    }
    return Node(id=f"syn{number:012d}", type=SYNTHETIC_TYPE, properties=properties, risk_level=risk)


def _grant(built: Graph, identity: Node) -> None:
    reachable = [node for kind in _REACH[identity.type] for node in built.of_type(kind)]
    for grant in range(_hash(identity.id, "grants") % 4):
        resource = _pick(reachable, identity.id, "grant", grant)
        raw = list(_PERMISSIONS[resource.type])
        wanted = 1 + _hash(identity.id, resource.id, "breadth") % min(3, len(raw))
        start = _hash(identity.id, resource.id, "start") % len(raw)
        permissions = tuple(sorted({raw[(start + step) % len(raw)] for step in range(wanted)}))
        built.access.setdefault(identity.id, {})[resource.id] = permissions
        built.access.setdefault(resource.id, {})[identity.id] = permissions


def effective_permissions(resource_type: str, raw: Iterable[str]) -> list[str]:
    table = _PERMISSIONS.get(resource_type, {})
    return sorted({table[permission] for permission in raw if permission in table})


# --- evaluating a spec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    node: Node
    related: Mapping[str, tuple[str, ...]]  # related node id -> raw permissions the relation granted


def select_nodes(spec: Mapping[str, Any], *, synthetic_count: int = 0) -> list[dict[str, Any]]:
    """Every node the spec selects, rendered like Veza's node objects, in result order
    (``synthetic_count``: how many `SyntheticUser` nodes exist)."""
    built = graph()
    result_value_type = spec.get("result_value_type") or "SOURCE_NODES"
    if result_value_type not in SUPPORTED_RESULT_VALUE_TYPES:
        raise SpecError(
            f'result_value_type "{result_value_type}" is not supported by the emulator; '
            f"use one of {', '.join(SUPPORTED_RESULT_VALUE_TYPES)}"
        )
    query_type = spec.get("query_type") or "SOURCE_TO_DESTINATION"
    if query_type != "SOURCE_TO_DESTINATION":
        raise SpecError(f'query_type "{query_type}" is not supported by the emulator')
    relation = spec.get("relates_to_exp")
    _check_relation_types(relation)
    matches: dict[str, _Match] = {}
    for node_spec in _node_specs(spec.get("source_node_types"), "source_node_types"):
        node_type = node_spec["node_type"]
        candidates = (
            map(synthetic_node, range(1, synthetic_count + 1))
            if node_type == SYNTHETIC_TYPE
            else built.of_type(node_type)
        )
        for node in candidates:
            if node.id in matches or not _node_matches(node_spec, node):
                continue
            related = _relation_matches(relation, node, built) if relation else (True, {})
            if related[0]:
                matches[node.id] = _Match(node, related[1])
    ordered = sorted(matches.values(), key=lambda match: (match.node.name.lower(), match.node.id))
    with_counts = result_value_type == "SOURCE_NODES_WITH_COUNTS"
    return [_render(match, built, with_counts=with_counts, related_only=bool(relation)) for match in ordered]


def _render(match: _Match, built: Graph, *, with_counts: bool, related_only: bool) -> dict[str, Any]:
    node = match.node
    related = match.related if related_only else built.related(node)
    raw: set[str] = set()
    effective: set[str] = set()
    if related_only:
        for related_id, permissions in match.related.items():
            raw.update(permissions)
            resource = node if node.type in RESOURCE_COUNTS else built.nodes[related_id]
            effective.update(effective_permissions(resource.type, permissions))
    return {
        "id": node.id,
        "type": node.type,
        "properties": dict(node.properties),
        "destination_node_count": len(related) if with_counts else 0,
        "permissions": sorted(raw),
        "raw_permissions": sorted(raw),
        "effective_permissions": sorted(effective),
        "risk_level": node.risk_level,
    }


def _node_specs(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} is required and must be an object with a 'nodes' list")
    nodes = value.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise SpecError(f"{where}.nodes must list at least one node spec")
    for position, node_spec in enumerate(nodes):
        if not isinstance(node_spec, Mapping):
            raise SpecError(f"{where}.nodes[{position}] must be an object")
        node_type = node_spec.get("node_type")
        if node_type not in NODE_TYPES:
            raise SpecError(f'{where}.nodes[{position}]: unknown node type "{node_type}"')
    return list(nodes)


def _check_relation_types(relation: Any) -> None:
    """Unknown node types anywhere in relates_to_exp are rejected up front, as Veza does."""
    if relation is None:
        return
    if not isinstance(relation, Mapping):
        raise SpecError("relates_to_exp must be an object")
    for position, spec in enumerate(relation.get("specs") or []):
        if not isinstance(spec, Mapping):
            raise SpecError(f"relates_to_exp.specs[{position}] must be an object")
        _node_specs(spec.get("node_types"), f"relates_to_exp.specs[{position}].node_types")
        for deprecated in ("required_intermediate_node_types", "avoided_intermediate_node_types"):
            if (spec.get(deprecated) or {}).get("nodes"):
                raise SpecError(
                    f"relates_to_exp.specs[{position}].{deprecated} is not supported by the emulator"
                )
    for child in relation.get("child_expressions") or []:
        _check_relation_types(child)


def _node_matches(node_spec: Mapping[str, Any], node: Node) -> bool:
    if node_spec.get("node_type") != node.type:
        return False
    if node_spec.get("node_id") and node_spec["node_id"] != node.id:
        return False
    if node_spec.get("tags") or node_spec.get("excluded_tags") or node_spec.get("count_conditions"):
        raise SpecError("tags and count_conditions are not supported by the emulator")
    legacy = node_spec.get("conditions") or []
    legacy_ok = all(_condition_holds(condition, node) for condition in legacy)
    return legacy_ok and _expression_holds(node_spec.get("condition_expression"), node)


def _combine(operator: Any, results: Iterable[bool], negate: Any, where: str) -> bool:
    if operator in (None, "", "AND"):
        combined = all(results)
    elif operator == "OR":
        evaluated = list(results)
        combined = any(evaluated) if evaluated else True
    else:
        raise SpecError(f'{where}: operator must be AND or OR, not "{operator}"')
    return not combined if negate else combined


def _expression_holds(expression: Any, node: Node) -> bool:
    if expression is None:
        return True
    if not isinstance(expression, Mapping):
        raise SpecError("condition_expression must be an object")
    if expression.get("tag_specs"):
        raise SpecError("condition_expression.tag_specs is not supported by the emulator (no tags)")
    results = [_condition_holds(spec, node) for spec in expression.get("specs") or []]
    results += [_expression_holds(child, node) for child in expression.get("child_expressions") or []]
    return _combine(expression.get("operator"), results, expression.get("not"), "condition_expression")


def _lookup(node: Node, name: str) -> Any:
    if name in node.properties:
        return node.properties[name]
    return {"id": node.id, "type": node.type, "risk_level": node.risk_level}.get(name)


def _ordered(check: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(actual: Any, wanted: Any) -> bool:
        comparable = (isinstance(actual, int | float) and isinstance(wanted, int | float)) or (
            isinstance(actual, str) and isinstance(wanted, str)
        )
        return comparable and not isinstance(actual, bool) and check(actual, wanted)

    return compare


def _text(check: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def compare(actual: Any, wanted: Any) -> bool:
        return isinstance(actual, str) and isinstance(wanted, str) and check(actual.lower(), wanted.lower())

    return compare


def _in(actual: Any, wanted: Any) -> bool:
    if not isinstance(wanted, list):
        raise SpecError("fn IN takes a list value")
    return actual in wanted


_FUNCTIONS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": lambda actual, wanted: actual == wanted,
    "NEQ": lambda actual, wanted: actual != wanted,
    "CONTAINS": _text(lambda actual, wanted: wanted in actual),
    "STARTS_WITH": _text(str.startswith),
    "ENDS_WITH": _text(str.endswith),
    "IN": _in,
    "GT": _ordered(lambda actual, wanted: actual > wanted),
    "GTE": _ordered(lambda actual, wanted: actual >= wanted),
    "LT": _ordered(lambda actual, wanted: actual < wanted),
    "LTE": _ordered(lambda actual, wanted: actual <= wanted),
}


def _condition_holds(condition: Any, node: Node) -> bool:
    if not isinstance(condition, Mapping):
        raise SpecError("a condition spec must be an object")
    fn, name = condition.get("fn"), condition.get("property")
    if fn not in _FUNCTIONS:
        raise SpecError(f'condition fn "{fn}" is not supported; use one of {", ".join(_FUNCTIONS)}')
    if not isinstance(name, str) or not name:
        raise SpecError("a condition spec needs a property name")
    if condition.get("value_property_name") or condition.get("value_property_from_other_node"):
        raise SpecError("comparing with another node's property is not supported by the emulator")
    holds = _FUNCTIONS[fn](_lookup(node, name), condition.get("value"))
    return not holds if condition.get("not") else holds


def _relation_matches(
    relation: Mapping[str, Any], node: Node, built: Graph
) -> tuple[bool, dict[str, tuple[str, ...]]]:
    """Does the node satisfy the relation expression, and through which related nodes."""
    matched: dict[str, tuple[str, ...]] = {}
    results: list[bool] = []
    for spec in relation.get("specs") or []:
        related = _related_through(spec, node, built)
        if spec.get("no_relation"):
            results.append(not related)
        else:
            results.append(bool(related))
            matched.update(related)
    for child in relation.get("child_expressions") or []:
        holds, child_matched = _relation_matches(child, node, built)
        results.append(holds)
        matched.update(child_matched)
    holds = _combine(relation.get("operator"), results, relation.get("not"), "relates_to_exp")
    return holds, matched if holds else {}


def _related_through(spec: Mapping[str, Any], node: Node, built: Graph) -> dict[str, tuple[str, ...]]:
    wanted_specs = spec["node_types"]["nodes"]
    found: dict[str, tuple[str, ...]] = {}
    for related_id, permissions in built.related(node).items():
        other = built.nodes[related_id]
        if not any(_node_matches(wanted, other) for wanted in wanted_specs):
            continue
        resource_type = other.type if other.type in RESOURCE_COUNTS else node.type
        if _permissions_match(spec.get("raw_permissions"), permissions) and _permissions_match(
            spec.get("effective_permissions"), effective_permissions(resource_type, permissions)
        ):
            found[related_id] = permissions
    return found


def _permissions_match(wanted: Any, granted: Sequence[str]) -> bool:
    if not wanted or not wanted.get("values"):
        return True
    values = wanted["values"]
    if wanted.get("operator", "OR") == "AND":
        return all(value in granted for value in values)
    return any(value in granted for value in values)
