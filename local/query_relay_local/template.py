"""template.yaml, read for the local stack: functions, the state machine, parameters.

Everything the local stack runs comes from the SAM template (handlers, environment, the ASL file
and its substitutions), so the local stack and the deployed one cannot drift apart. Intrinsic
functions are resolved against local stand-ins: function ARNs in the moto account, a local bucket
name, parameter defaults (or overrides).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode_str

# moto's default account and the region the local stack runs in.
LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"
LOCAL_PARTITION = "aws"
LOCAL_STACK_NAME = "query-relay-local"
# CloudFormation's id of a stack: an ARN ending in a UUID the stack keeps for its life.
LOCAL_STACK_ID = (
    f"arn:{LOCAL_PARTITION}:cloudformation:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:stack/{LOCAL_STACK_NAME}/"
    f"{uuid.uuid5(uuid.NAMESPACE_URL, LOCAL_STACK_NAME)}"
)
LOCAL_PSEUDO_PARAMETERS = {
    "AWS::Region": LOCAL_REGION,
    "AWS::AccountId": LOCAL_ACCOUNT_ID,
    "AWS::Partition": LOCAL_PARTITION,
    "AWS::StackName": LOCAL_STACK_NAME,
    "AWS::StackId": LOCAL_STACK_ID,
    "AWS::URLSuffix": "amazonaws.com",
}
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"

_FUNCTION = "AWS::Serverless::Function"
_STATE_MACHINE = "AWS::Serverless::StateMachine"
_BUCKET = "AWS::S3::Bucket"
_TABLE = "AWS::DynamoDB::Table"
_ROLE = "AWS::IAM::Role"
_SCHEDULE_GROUP = "AWS::Scheduler::ScheduleGroup"
_MANAGED_POLICY = "AWS::IAM::ManagedPolicy"
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")
_INTRINSICS = ("Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join", "Fn::Select", "Fn::Split")


class TemplateError(ValueError):
    """template.yaml cannot be run locally (parse error, missing property, unresolvable reference)."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str | None


@dataclass(frozen=True)
class Function:
    logical_id: str
    code_uri: Path
    handler: str  # "module.function", as in the template
    environment: dict[str, str]
    timeout_seconds: int
    memory_mb: int

    @property
    def name(self) -> str:
        return self.logical_id

    @property
    def arn(self) -> str:
        return local_function_arn(self.logical_id)

    @property
    def handler_file(self) -> Path:
        """The file that holds the handler: ``app.lambda_handler`` -> ``<CodeUri>/app.py``."""
        module_path = self.handler.rpartition(".")[0].replace(".", "/")
        return self.code_uri / f"{module_path}.py"

    @property
    def handler_function(self) -> str:
        return self.handler.rpartition(".")[2]


@dataclass(frozen=True)
class StateMachine:
    logical_id: str
    name: str  # its Name property as CloudFormation resolves it, else the logical id
    type: str
    definition_path: Path
    substitutions: dict[str, str]

    @property
    def arn(self) -> str:
        return local_state_machine_arn(self.name)

    def definition(self) -> str:
        """The ASL with every ``${Name}`` replaced, exactly as CloudFormation would."""
        text = self.definition_path.read_text()
        for name, value in self.substitutions.items():
            text = text.replace(f"${{{name}}}", value)
        leftover = sorted(set(_SUB_VARIABLE.findall(text)))
        if leftover:
            raise TemplateError(
                f"{self.definition_path.name}: no DefinitionSubstitutions for {', '.join(leftover)}"
            )
        return text


@dataclass(frozen=True)
class Table:
    """A DynamoDB table, as far as creating it locally needs: its name and keys."""

    logical_id: str
    name: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]


@dataclass(frozen=True)
class LocalTemplate:
    path: Path
    parameters: dict[str, Parameter]
    parameter_values: dict[str, str]
    functions: dict[str, Function]
    state_machines: dict[str, StateMachine]
    buckets: dict[str, str]  # logical id -> local bucket name
    tables: dict[str, Table] = field(default_factory=dict)
    resolver: _Resolver | None = field(default=None, repr=False)

    def resolve(self, value: Any, where: str) -> Any:
        """A template value with its intrinsics (Ref, Fn::GetAtt, Fn::Sub) resolved to the local
        stand-ins, recursively through lists and mappings (an IAM policy document, say)."""
        if self.resolver is None:
            raise TemplateError("this template was not loaded with load_template")
        return self.resolver.resolve_deep(value, where)

    @property
    def state_machine(self) -> StateMachine:
        if len(self.state_machines) != 1:
            raise TemplateError(
                f"expected one state machine in {self.path}, found {len(self.state_machines)}"
            )
        return next(iter(self.state_machines.values()))

    def function(self, name_or_arn: str) -> Function | None:
        """The function an Invoke names: logical id, ``<id>:<qualifier>`` or a full function ARN."""
        name = name_or_arn
        if name.startswith("arn:"):
            parts = name.split(":")
            name = parts[6] if len(parts) > 6 else ""
        else:
            name = name.split(":")[0]
        return self.functions.get(name)


def local_function_arn(logical_id: str) -> str:
    return f"arn:{LOCAL_PARTITION}:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:function:{logical_id}"


def local_state_machine_arn(name: str) -> str:
    return f"arn:{LOCAL_PARTITION}:states:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:stateMachine:{name}"


def local_policy_arn(name: str) -> str:
    return f"arn:{LOCAL_PARTITION}:iam::{LOCAL_ACCOUNT_ID}:policy/{name}"


def local_bucket_name(logical_id: str) -> str:
    """A valid, stable S3 name: ``ResultsBucket`` -> ``query-relay-local-results-bucket``."""
    kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", logical_id).lower()
    return f"{LOCAL_STACK_NAME}-{kebab}"[:63]


def local_table_name(logical_id: str) -> str:
    """``ControlTable`` -> ``query-relay-local-control-table``."""
    return local_bucket_name(logical_id)


# What Powertools reads as query_relay.observability creates its Logger and Metrics, on import.
POWERTOOLS_VARIABLES = ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE")


def apply_powertools_environment(path: Path = DEFAULT_TEMPLATE_PATH) -> None:
    """Give this process the service name and metrics namespace the template gives its functions,
    where it has none: the code names neither, and Powertools reads them as ``query_relay`` is
    imported. Whatever runs the handlers outside Lambda (the CLI, the tests) calls this before
    importing ``query_relay``, so that their log lines and metrics read as the local stack's."""
    missing = [variable for variable in POWERTOOLS_VARIABLES if variable not in os.environ]
    if not missing or not path.is_file():  # installed without the clone's template: Powertools' defaults
        return
    environments = [function.environment for function in load_template(path).functions.values()]
    for variable in missing:
        values = {environment[variable] for environment in environments if variable in environment}
        if len(values) == 1:  # Globals: every function has the same
            os.environ[variable] = values.pop()


def load_template(
    path: Path = DEFAULT_TEMPLATE_PATH,
    parameter_overrides: Mapping[str, str] | None = None,
    pseudo_parameters: Mapping[str, str] | None = None,
) -> LocalTemplate:
    """The template resolved against the local stack; ``pseudo_parameters`` replace the local
    stack's own (``AWS::StackName``, ``AWS::Partition``, ...), to see what another stack would get."""
    document = decode_template(path)
    resources: dict[str, Any] = dict(document.get("Resources") or {})
    parameters = {
        name: Parameter(name=name, type=str(spec.get("Type", "String")), default=_scalar_or_none(spec))
        for name, spec in (document.get("Parameters") or {}).items()
    }
    values = _parameter_values(parameters, parameter_overrides or {})
    buckets = {lid: local_bucket_name(lid) for lid, res in resources.items() if res.get("Type") == _BUCKET}
    tables = {
        lid: _table(lid, dict(res.get("Properties") or {}))
        for lid, res in resources.items()
        if res.get("Type") == _TABLE
    }
    resolver = _Resolver(
        values,
        resources,
        buckets,
        {lid: table.name for lid, table in tables.items()},
        pseudo={**LOCAL_PSEUDO_PARAMETERS, **(pseudo_parameters or {})},
    )
    function_defaults = dict((document.get("Globals") or {}).get("Function") or {})
    functions = {
        lid: _function(lid, dict(res.get("Properties") or {}), function_defaults, path.parent, resolver)
        for lid, res in resources.items()
        if res.get("Type") == _FUNCTION
    }
    state_machines = {
        lid: _state_machine(lid, dict(res.get("Properties") or {}), path.parent, resolver)
        for lid, res in resources.items()
        if res.get("Type") == _STATE_MACHINE
    }
    return LocalTemplate(
        path=path,
        parameters=parameters,
        parameter_values=values,
        functions=functions,
        state_machines=state_machines,
        buckets=buckets,
        tables=tables,
        resolver=resolver,
    )


def decode_template(path: Path) -> dict[str, Any]:
    """template.yaml as a document, CloudFormation's short forms (!Ref, !Sub, ...) in long form."""
    try:
        text = path.read_text()
    except OSError as error:
        raise TemplateError(f"cannot read {path}: {error.strerror}") from None
    document, problems = decode_str(text)
    if problems or not isinstance(document, dict):
        details = "; ".join(str(problem) for problem in problems) or "not a mapping"
        raise TemplateError(f"cannot parse {path}: {details}")
    return document


def _scalar_or_none(spec: Mapping[str, Any]) -> str | None:
    default = spec.get("Default")
    return None if default is None else _as_string(default)


def _parameter_values(parameters: Mapping[str, Parameter], overrides: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - set(parameters))
    if unknown:
        raise TemplateError(f"unknown parameter override(s): {', '.join(unknown)}")
    values: dict[str, str] = {}
    for name, parameter in parameters.items():
        value = overrides.get(name, parameter.default)
        if value is not None:
            values[name] = value
    return values


def _function(
    logical_id: str,
    properties: dict[str, Any],
    defaults: dict[str, Any],
    template_dir: Path,
    resolver: _Resolver,
) -> Function:
    merged = {**defaults, **properties}
    for required in ("CodeUri", "Handler"):
        if not isinstance(merged.get(required), str):
            raise TemplateError(f"{logical_id}: {required} must be a string to run locally")
    environment = {
        **_variables(defaults, "Globals.Function", resolver),
        **_variables(properties, logical_id, resolver),
    }
    return Function(
        logical_id=logical_id,
        code_uri=(template_dir / merged["CodeUri"]).resolve(),
        handler=merged["Handler"],
        environment=environment,
        timeout_seconds=int(merged.get("Timeout", 3)),  # Lambda's default
        memory_mb=int(merged.get("MemorySize", 128)),  # Lambda's default
    )


def _variables(properties: Mapping[str, Any], where: str, resolver: _Resolver) -> dict[str, str]:
    variables = ((properties.get("Environment") or {}).get("Variables")) or {}
    return {
        name: _as_string(resolver.resolve(value, f"{where}.Environment.Variables.{name}"))
        for name, value in variables.items()
    }


def _state_machine(
    logical_id: str, properties: dict[str, Any], template_dir: Path, resolver: _Resolver
) -> StateMachine:
    definition_uri = properties.get("DefinitionUri")
    if not isinstance(definition_uri, str):
        raise TemplateError(f"{logical_id}: DefinitionUri must be a local file path to run locally")
    substitutions = {
        name: _as_string(resolver.resolve(value, f"{logical_id}.DefinitionSubstitutions.{name}"))
        for name, value in (properties.get("DefinitionSubstitutions") or {}).items()
    }
    return StateMachine(
        logical_id=logical_id,
        name=resolver.physical_name(logical_id, f"{logical_id}.Name"),
        type=str(properties.get("Type", "STANDARD")),
        definition_path=(template_dir / definition_uri).resolve(),
        substitutions=substitutions,
    )


def _table(logical_id: str, properties: dict[str, Any]) -> Table:
    key_schema, attributes = properties.get("KeySchema"), properties.get("AttributeDefinitions")
    if not isinstance(key_schema, list) or not isinstance(attributes, list):
        raise TemplateError(f"{logical_id}: KeySchema and AttributeDefinitions must be lists to run locally")
    return Table(
        logical_id=logical_id,
        name=local_table_name(logical_id),
        key_schema=[{str(k): str(v) for k, v in entry.items()} for entry in key_schema],
        attribute_definitions=[{str(k): str(v) for k, v in entry.items()} for entry in attributes],
    )


def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TemplateError(f"expected a scalar value, got {type(value).__name__}")


@dataclass
class _Resolver:
    """Resolves Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select and Fn::Split against the local
    stand-ins of the template's resources."""

    parameters: Mapping[str, str]
    resources: Mapping[str, Any]
    buckets: Mapping[str, str]
    tables: Mapping[str, str]
    pseudo: Mapping[str, str] = field(default_factory=lambda: dict(LOCAL_PSEUDO_PARAMETERS))

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, Mapping) and len(value) == 1:
            (function, argument), *_ = value.items()
            if function == "Ref":
                return self.ref(str(argument), where)
            if function == "Fn::GetAtt":
                target, attribute = argument if isinstance(argument, list) else str(argument).split(".", 1)
                return self.get_att(str(target), str(attribute), where)
            if function == "Fn::Sub":
                return self.sub(argument, where)
            if function == "Fn::Join":
                delimiter, items = argument
                return str(delimiter).join(_as_string(item) for item in self._list(items, where))
            if function == "Fn::Select":
                index, items = argument
                return self._list(items, where)[int(self.resolve(index, where))]
            if function == "Fn::Split":
                delimiter, text = argument
                return _as_string(self.resolve(text, where)).split(str(delimiter))
        if isinstance(value, Mapping | list):
            raise TemplateError(
                f"{where}: cannot resolve {dict(value) if isinstance(value, Mapping) else value}"
            )
        return value

    def ref(self, name: str, where: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        kind = self._type_of(name, where)
        if kind == _BUCKET:
            return self.buckets[name]
        if kind == _TABLE:
            return self.tables[name]
        if kind == _FUNCTION:
            return name  # Ref of a function is its name; locally the logical id
        if kind == _STATE_MACHINE:
            return local_state_machine_arn(self.physical_name(name, where))
        if kind in (_SCHEDULE_GROUP, _ROLE):
            return self.physical_name(name, where)
        if kind == _MANAGED_POLICY:
            return local_policy_arn(self.physical_name(name, where))
        raise TemplateError(f"{where}: Ref to {name} ({kind}) has no local stand-in")

    def get_att(self, name: str, attribute: str, where: str) -> str:
        kind = self._type_of(name, where)
        if kind == _FUNCTION and attribute == "Arn":
            return local_function_arn(name)
        if kind == _BUCKET and attribute == "Arn":
            return f"arn:{LOCAL_PARTITION}:s3:::{self.buckets[name]}"
        if kind == _TABLE and attribute == "Arn":
            table = self.tables[name]
            return f"arn:{LOCAL_PARTITION}:dynamodb:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:table/{table}"
        if kind == _STATE_MACHINE and attribute == "Name":
            return self.physical_name(name, where)
        if kind == _ROLE and attribute == "Arn":
            return f"arn:{LOCAL_PARTITION}:iam::{LOCAL_ACCOUNT_ID}:role/{self.physical_name(name, where)}"
        raise TemplateError(f"{where}: Fn::GetAtt {name}.{attribute} has no local stand-in")

    def sub(self, argument: Any, where: str) -> str:
        if isinstance(argument, list):
            text, variables = str(argument[0]), dict(argument[1]) if len(argument) > 1 else {}
        else:
            text, variables = str(argument), {}
        local = {name: _as_string(self.resolve(value, where)) for name, value in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return local[name]
            if "." in name and not name.startswith("AWS::"):
                target, attribute = name.split(".", 1)
                return self.get_att(target, attribute, where)
            return self.ref(name, where)

        # "${!Literal}" stands for the text "${Literal}".
        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")

    def resolve_deep(self, value: Any, where: str) -> Any:
        if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _INTRINSICS:
            return self.resolve(value, where)
        if isinstance(value, Mapping):
            return {key: self.resolve_deep(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve_deep(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return value

    def physical_name(self, logical_id: str, where: str) -> str:
        """A resource's name: its ``Name`` (``RoleName`` for a role) property resolved, else the
        logical id (CloudFormation would generate one; locally the logical id is stable and short)."""
        resource = self.resources.get(logical_id) or {}
        key = {_ROLE: "RoleName", _MANAGED_POLICY: "ManagedPolicyName"}.get(str(resource.get("Type")), "Name")
        declared = (resource.get("Properties") or {}).get(key)
        return logical_id if declared is None else _as_string(self.resolve(declared, where))

    def _list(self, value: Any, where: str) -> list[Any]:
        """A list argument (Fn::Join, Fn::Select): a literal list, each item resolved, or what an
        intrinsic (Fn::Split) returns."""
        items = (
            [self.resolve(item, where) for item in value]
            if isinstance(value, list)
            else self.resolve(value, where)
        )
        if not isinstance(items, list):
            raise TemplateError(f"{where}: expected a list, got {items!r}")
        return items

    def _type_of(self, name: str, where: str) -> str:
        resource = self.resources.get(name)
        if resource is None:
            raise TemplateError(f"{where}: {name} is neither a parameter nor a resource")
        return str(resource.get("Type"))
