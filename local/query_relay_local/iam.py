"""IAM on the local stack, enforced as AWS enforces it, from the roles template.yaml really grants.

moto checks no permission unless asked. Here it is asked: after the stack's own setup, every
request to the emulated AWS is authenticated and authorised by moto's IAM (the switch is moto's
``INITIAL_NO_AUTH_ACTION_COUNT``, the setting its ``enable_iam_authentication`` flips), and each
caller signs with the credentials of the principal that would make the call on AWS:

- a function's handler: its execution role, as SAM translates the template (policy templates such
  as ``S3CrudPolicy`` expanded by ``samtranslator`` itself, intrinsics resolved to the local
  resources), assumed through STS like Lambda does;
- the state machine's own service calls (Lambda invoke, ``events:putEvents``,
  ``states:startExecution``): the state machine's role;
- a schedule delivery (:meth:`query_relay_local.stack.LocalStack.deliver_schedule`): the role the
  schedule names, normally the template's ``SchedulerRole``;
- the stack itself and whoever drives it (tests, the CLI starting a job): an administrator.

The handlers run in this process and share its boto3 clients, so the principal cannot travel in
the environment as on Lambda. It travels in a context variable set around each invocation; every
boto3 credential lookup in the process (env provider) yields :class:`InvocationCredentials`, which
answer with the current invocation's keys at signing time. s3transfer's worker threads run their
tasks in the submitter's context (:func:`_carry_context_into_executors`).

moto's own checks are partial; this module completes them where the app depends on them:
- for services other than S3 moto checks every action against resource ``*``, so a grant scoped
  to an ARN (all of ours) would never match: :func:`request_resource` names the ARN AWS
  authorises for each action the app calls (an action it does not know is checked against ``*``,
  which fails a scoped grant: strict, never lenient);
- Lambda's Invoke is answered by the local runtime, not moto: :func:`authorize_invoke` checks it
  (a Lambda task so refused fails as on AWS: query_relay_local.aws_limits names its error);
- an authorisation failure of a JSON-protocol service is answered as AWS answers it
  (``AccessDeniedException`` naming the action and resource), not with moto's XML ``AccessDenied``;
- a signed request without a body (a GET with a query string) is verified over the empty body it
  was signed with (moto signs its query parameters as a form body and refuses it);
- a presigned S3 URL is verified (signature, expiry) and authorised as its signer (moto fails it);
- S3 ``DeleteObjects`` is checked as ``s3:DeleteObject`` on each key, as AWS does (moto checks the
  bucket);

Managed policies that SAM attaches (``AWSLambdaBasicExecutionRole``, ``AWSXrayWriteOnlyAccess``)
grant CloudWatch Logs and X-Ray writes, which nothing calls locally (logs are captured in process,
tracing is off): they are not attached, and a managed policy this module does not know is an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

import boto3
import botocore.credentials
from botocore.credentials import Credentials, ReadOnlyCredentials
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.responses import BaseResponse
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from werkzeug.wrappers import Request, Response

from query_relay_local.lambda_runtime import service_error
from query_relay_local.moto_fixes import apply_once
from query_relay_local.template import (
    LOCAL_ACCOUNT_ID,
    LOCAL_PARTITION,
    LOCAL_REGION,
    LOCAL_STACK_NAME,
    Function,
    LocalTemplate,
    TemplateError,
    decode_template,
)

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

ADMIN_USER = f"{LOCAL_STACK_NAME}-admin"
# Attached by SAM to every function (and X-Ray to the state machine); they grant only log and trace
# writes, which the local stack never makes (module docstring).
_MANAGED_POLICIES_WITHOUT_LOCAL_CALLS = frozenset(
    {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    }
)
_ROLE = "AWS::IAM::Role"
_MANAGED_POLICY = "AWS::IAM::ManagedPolicy"
_FUNCTION = "AWS::Lambda::Function"
_STATE_MACHINE = "AWS::StepFunctions::StateMachine"
_SAM_URIS = ("CodeUri", "ContentUri", "DefinitionUri")
_ARN = f"arn:{LOCAL_PARTITION}:{{service}}:{{region}}:{{account}}:{{resource}}"


@dataclass(frozen=True)
class ManagedPolicy:
    """An AWS::IAM::ManagedPolicy of the template (customer managed), its intrinsics resolved."""

    name: str
    arn: str
    document: dict[str, Any]


@dataclass(frozen=True)
class Role:
    """An IAM role of the translated template, its intrinsics resolved."""

    logical_id: str
    assume_role_policy: dict[str, Any]
    policies: dict[str, dict[str, Any]]  # inline policy name -> document
    managed_policy_arns: tuple[str, ...] = ()  # the template's own managed policies it attaches

    @property
    def name(self) -> str:
        return self.logical_id

    @property
    def arn(self) -> str:
        return f"arn:{LOCAL_PARTITION}:iam::{LOCAL_ACCOUNT_ID}:role/{self.name}"


@dataclass(frozen=True)
class TranslatedRoles:
    roles: dict[str, Role]
    managed_policies: dict[str, ManagedPolicy]  # by ARN
    function_roles: dict[str, str]  # function logical id -> role logical id
    state_machine_roles: dict[str, str]  # state machine logical id -> role logical id


@dataclass(frozen=True)
class Principal:
    """Who signs a request: an IAM user's or an assumed role's keys."""

    arn: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def frozen(self) -> ReadOnlyCredentials:
        return ReadOnlyCredentials(self.access_key_id, self.secret_access_key, self.session_token)

    def client(self, service: str, endpoint_url: str, **kwargs: Any) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            **kwargs,
        )


_FEATURE_TOGGLE_LOG = logging.getLogger("samtranslator.feature_toggle.feature_toggle")


def sam_translate(template: LocalTemplate) -> dict[str, Any]:
    """template.yaml as CloudFormation receives it after the SAM transform (samtranslator itself;
    intrinsics left as they are)."""
    document = json.loads(json.dumps(decode_template(template.path), default=str))
    for logical_id, resource in (document.get("Resources") or {}).items():
        properties = resource.get("Properties") or {}
        for key in _SAM_URIS:  # the translator wants S3 locations; their content is irrelevant here
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://{LOCAL_STACK_NAME}-artifacts/{logical_id}"
    # The translator reads only the session's region: a stand-in, not a boto3 Session, which would
    # read the user's AWS profile (and fail on one that does not exist) for nothing.
    translator = Translator(None, Parser(), boto_session=SimpleNamespace(region_name=LOCAL_REGION))
    pseudo = {
        "AWS::Region": LOCAL_REGION,
        "AWS::AccountId": LOCAL_ACCOUNT_ID,
        "AWS::Partition": LOCAL_PARTITION,
        "AWS::StackName": LOCAL_STACK_NAME,
    }
    # Lines on the user's terminal (make demo) that say nothing: without a feature-toggle
    # configuration every SAM feature is off, and the translator warns once for each it asks about;
    # the metrics it records, left unpublished, are warned about whenever the object is collected
    # (so they are handed to its own dummy publisher).
    level = _FEATURE_TOGGLE_LOG.level
    _FEATURE_TOGGLE_LOG.setLevel(logging.ERROR)
    try:
        translated: dict[str, Any] = translator.translate(
            document,
            parameter_values={**template.parameter_values, **pseudo},
            get_managed_policy_map=dict,  # the template names no managed policy by name
        )
    finally:
        _FEATURE_TOGGLE_LOG.setLevel(level)
        translator.metrics.publish()
    return translated


def translate_roles(template: LocalTemplate) -> TranslatedRoles:
    """The execution roles SAM would create for template.yaml, with policies resolved locally."""
    resources: dict[str, Any] = sam_translate(template)["Resources"]
    managed = {}
    for logical_id, resource in resources.items():
        if resource["Type"] == _MANAGED_POLICY:
            arn = template.resolve({"Ref": logical_id}, logical_id)
            properties = resource.get("Properties") or {}
            managed[arn] = ManagedPolicy(
                name=arn.rpartition("/")[2],
                arn=arn,
                document=template.resolve(properties["PolicyDocument"], f"{logical_id}.PolicyDocument"),
            )
    roles = {
        logical_id: _role(logical_id, resource.get("Properties") or {}, template, set(managed))
        for logical_id, resource in resources.items()
        if resource["Type"] == _ROLE
    }
    return TranslatedRoles(
        roles=roles,
        managed_policies=managed,
        function_roles=_roles_of(resources, _FUNCTION, "Role"),
        state_machine_roles=_roles_of(resources, _STATE_MACHINE, "RoleArn"),
    )


_translations: dict[tuple[str, str, tuple[tuple[str, str], ...]], TranslatedRoles] = {}
_translations_lock = threading.Lock()


def translated_roles(template: LocalTemplate) -> TranslatedRoles:
    """:func:`translate_roles`, remembered per template text and parameters (translating takes a
    noticeable fraction of a second; tests start hundreds of stacks)."""
    key = (str(template.path), template.path.read_text(), tuple(sorted(template.parameter_values.items())))
    with _translations_lock:
        found = _translations.get(key)
    if found is None:
        found = translate_roles(template)
        with _translations_lock:
            _translations[key] = found
    return found


def _role(
    logical_id: str, properties: Mapping[str, Any], template: LocalTemplate, local_managed: set[str]
) -> Role:
    attached = {
        str(arn)
        for arn in template.resolve(
            properties.get("ManagedPolicyArns") or [], f"{logical_id}.ManagedPolicyArns"
        )
    }
    unknown = sorted(attached - _MANAGED_POLICIES_WITHOUT_LOCAL_CALLS - local_managed)
    if unknown:
        raise TemplateError(
            f"{logical_id}: managed policies {unknown} are not modelled by the local stack's IAM; "
            "grant what the code calls in inline statements, or teach query_relay_local.iam about them"
        )
    policies = {
        str(policy["PolicyName"]): template.resolve(policy["PolicyDocument"], f"{logical_id}.Policies")
        for policy in properties.get("Policies") or []
    }
    return Role(
        logical_id=logical_id,
        assume_role_policy=template.resolve(
            properties["AssumeRolePolicyDocument"], f"{logical_id}.AssumeRolePolicyDocument"
        ),
        policies=policies,
        managed_policy_arns=tuple(sorted(attached & local_managed)),
    )


def _roles_of(resources: Mapping[str, Any], kind: str, role_property: str) -> dict[str, str]:
    """{resource logical id: role logical id} for resources of ``kind`` whose role is one of ours."""
    found: dict[str, str] = {}
    for logical_id, resource in resources.items():
        role = (resource.get("Properties") or {}).get(role_property) if resource["Type"] == kind else None
        if isinstance(role, Mapping) and "Fn::GetAtt" in role:
            target = role["Fn::GetAtt"]
            found[logical_id] = str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    return found


# --- principals ----------------------------------------------------------------------------------


@dataclass
class LocalIam:
    """The stack's principals, created in moto's IAM during setup (before enforcement starts)."""

    translated: TranslatedRoles
    admin: Principal | None = None
    role_principals: dict[str, Principal] = field(default_factory=dict)  # role logical id -> keys

    def create_admin(self, iam: IAMClient) -> Principal:
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(
            UserName=ADMIN_USER,
            PolicyName="administrator",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self.admin = Principal(
            arn=f"arn:{LOCAL_PARTITION}:iam::{LOCAL_ACCOUNT_ID}:user/{ADMIN_USER}",
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
        )
        return self.admin

    def create_roles(self) -> None:
        """Create every translated role with its inline and managed policies, and assume each (as
        Lambda, Step Functions and Scheduler do) for the keys its callers sign with.

        Straight into moto's IAM and STS backends in this process, not through the API: this is
        the stack's own setup, before enforcement, and some fifty API calls would add over half a
        second to every stack's start. moto validates each policy document all the same."""
        from moto.iam.models import iam_backends  # noqa: PLC0415
        from moto.sts.models import sts_backends  # noqa: PLC0415

        iam = iam_backends[LOCAL_ACCOUNT_ID][LOCAL_PARTITION]
        sts = sts_backends[LOCAL_ACCOUNT_ID][LOCAL_PARTITION]
        for policy in self.translated.managed_policies.values():
            iam.create_policy(
                description="",
                path="/",
                policy_document=json.dumps(policy.document),
                policy_name=policy.name,
                tags=[],
            )
        for role in self.translated.roles.values():
            iam.create_role(
                role_name=role.name,
                assume_role_policy_document=json.dumps(role.assume_role_policy),
                path="/",
                permissions_boundary=None,
                description="",
                tags=[],
                max_session_duration=None,
            )
            for policy_name, document in role.policies.items():
                # SAM writes its policies without a Version, which AWS reads as 2008-10-17 and moto
                # refuses; the two versions differ only in policy variables, which ours do not use.
                versioned = {"Version": "2012-10-17", **document}
                iam.put_role_policy(role.name, policy_name, json.dumps(versioned))
            for policy_arn in role.managed_policy_arns:
                iam.attach_role_policy(policy_arn, role.name)
            session = role.name[:64]
            assumed = sts.assume_role(
                region_name=LOCAL_REGION,
                role_session_name=session,
                role_arn=role.arn,
                policy="",
                duration=43200,
                external_id="",
            )
            self.role_principals[role.logical_id] = Principal(
                arn=f"arn:{LOCAL_PARTITION}:sts::{LOCAL_ACCOUNT_ID}:assumed-role/{role.name}/{session}",
                access_key_id=assumed.access_key_id,
                secret_access_key=assumed.secret_access_key,
                session_token=assumed.session_token,
            )

    def for_function(self, function_logical_id: str) -> Principal | None:
        role = self.translated.function_roles.get(function_logical_id)
        return None if role is None else self.role_principals.get(role)

    def for_state_machine(self, state_machine_logical_id: str) -> Principal | None:
        role = self.translated.state_machine_roles.get(state_machine_logical_id)
        return None if role is None else self.role_principals.get(role)

    def for_role_arn(self, role_arn: str) -> Principal | None:
        for logical_id, role in self.translated.roles.items():
            if role.arn == role_arn:
                return self.role_principals.get(logical_id)
        return None


# --- who is calling ------------------------------------------------------------------------------

_acting: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("query_relay_local_principal")
_fallback: Principal | None = None  # the administrator, for callers outside any invocation
_installed_lock = threading.Lock()
_originals: dict[str, Any] = {}


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Every AWS request made in this context (and in executor tasks it submits) signs as
    ``principal``; None leaves the caller's principal unchanged."""
    if principal is None:
        yield
        return
    token = _acting.set(principal)
    try:
        yield
    finally:
        _acting.reset(token)


class InvocationCredentials(Credentials):
    """Credentials that are the current invocation's principal's, looked up when a request is signed."""

    def __init__(self) -> None:  # no super().__init__: every field is looked up
        self.method = "env"

    @staticmethod
    def _principal() -> Principal:
        principal = _acting.get(None) or _fallback
        if principal is None:
            raise RuntimeError("the local stack's IAM has no principal for this call")
        return principal

    @property
    def access_key(self) -> str:  # type: ignore[override]
        return self._principal().access_key_id

    @property
    def secret_key(self) -> str:  # type: ignore[override]
        return self._principal().secret_access_key

    @property
    def token(self) -> str | None:  # type: ignore[override]
        return self._principal().session_token

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        return self._principal().frozen()


def install(admin: Principal) -> None:
    """Make every boto3 client of this process sign as the current principal (else ``admin``)."""
    global _fallback  # noqa: PLW0603 - process-wide, like the environment the handlers read
    with _installed_lock:
        _fallback = admin
        if _originals:
            return
        _originals["env_load"] = botocore.credentials.EnvProvider.load
        _originals["submit"] = ThreadPoolExecutor.submit
        shared = InvocationCredentials()

        def load(self: botocore.credentials.EnvProvider) -> Credentials | None:
            return shared

        setattr(botocore.credentials.EnvProvider, "load", load)  # noqa: B010
        _carry_context_into_executors()


def uninstall() -> None:
    global _fallback  # noqa: PLW0603
    with _installed_lock:
        _fallback = None
        if "env_load" in _originals:
            setattr(botocore.credentials.EnvProvider, "load", _originals.pop("env_load"))  # noqa: B010
        if "submit" in _originals:
            setattr(ThreadPoolExecutor, "submit", _originals.pop("submit"))  # noqa: B010


def _carry_context_into_executors() -> None:
    """Run each executor task in a copy of its submitter's context (s3transfer uploads a handler's
    parts from worker threads: they must sign as that handler)."""
    original: Callable[..., Future[Any]] = _originals["submit"]

    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return original(self, contextvars.copy_context().run, fn, *args, **kwargs)

    setattr(ThreadPoolExecutor, "submit", submit)  # noqa: B010


# --- enforcement ---------------------------------------------------------------------------------


def enforce(enabled: bool) -> None:
    """Turn moto's IAM checks on (every request from now) or off (setup, debugging)."""
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if enabled else float("inf")
    ActionAuthenticatorMixin.request_count = 0


def is_enforced() -> bool:
    return bool(ActionAuthenticatorMixin.request_count >= moto_settings.INITIAL_NO_AUTH_ACTION_COUNT)


def request_resource(service: str, action: str, params: Mapping[str, Any], region: str, account: str) -> str:
    """The resource ARN AWS authorises ``service:action`` against, from the request's parameters
    (AWS Service Authorization Reference, "Resource types" of each action); "*" where the action
    takes no resource or is not one the app calls."""

    def arn(resource: str, service_name: str = service) -> str:
        return _ARN.format(service=service_name, region=region, account=account, resource=resource)

    def named(value: Any, build: Callable[[str], str]) -> str:
        text = str(value or "")
        return text if text.startswith("arn:") else build(text)

    if service == "states":
        for key in ("executionArn", "stateMachineArn"):
            if params.get(key):
                return str(params[key])
        return "*"
    if service == "dynamodb" and params.get("TableName"):
        return named(params["TableName"], lambda name: arn(f"table/{name}"))
    if service == "secretsmanager" and params.get("SecretId"):
        # A name is authorised as the secret's ARN; the random suffix AWS appends matches the
        # trailing "*" that secret grants end with.
        return named(params["SecretId"], lambda name: arn(f"secret:{name}"))
    if service == "events" and action == "PutEvents":
        buses = {str(entry.get("EventBusName") or "default") for entry in params.get("Entries") or []}
        if len(buses) == 1:
            return named(buses.pop(), lambda name: arn(f"event-bus/{name}"))
        return "*"
    if service == "glue" and params.get("DatabaseName"):
        table = params.get("TableName") or (params.get("TableInput") or {}).get("Name") or params.get("Name")
        database = params["DatabaseName"]
        return arn(f"table/{database}/{table}") if table else arn(f"database/{database}")
    if service == "scheduler" and params.get("Name") and action in _SCHEDULE_ACTIONS:
        group = params.get("GroupName") or "default"
        return arn(f"schedule/{group}/{params['Name']}")
    return "*"


_SCHEDULE_ACTIONS = frozenset({"CreateSchedule", "GetSchedule", "DeleteSchedule", "UpdateSchedule"})


def authorized_resources(resource: str) -> list[str]:
    """Every resource AWS authorises a request against, from the one ``request_resource`` names: a
    Glue table's action is checked on the catalog, the database and the table (AWS Glue Developer
    Guide, "Specifying AWS Glue resource ARNs"), a database's on the catalog and the database."""
    match = re.fullmatch(r"(arn:[^:]+:glue:[^:]*:[^:]*:)(database|table)/([^/]+)(/.+)?", resource)
    if match is None:
        return [resource]
    head, _, database, table = match.groups()
    found = [f"{head}catalog", f"{head}database/{database}"]
    return found + ([f"{head}table/{database}{table}"] if table else [])


def _request_params(response: BaseResponse) -> dict[str, Any]:
    """The request's parameters, whatever the protocol: JSON body, query string, path."""
    params: dict[str, Any] = {}
    body = response.body
    parsed = getattr(response, "params", None)  # moto's parsed parameters, where it has them
    for already in (parsed, body):
        if isinstance(already, dict):
            params.update(already)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                params.update(loaded)
    for key, values in parse_qs(urlsplit(response.uri).query).items():
        params.setdefault(key, values[-1])
    if _signing_service(response) == "scheduler":
        match = re.search(r"/schedules/([^/?]+)", urlsplit(response.uri).path)
        if match:
            params["Name"] = unquote(match.group(1))
        params["GroupName"] = params.get("GroupName") or params.get("groupName")
    return params


def _determine_resource(self: BaseResponse) -> str:
    try:
        action = self._get_action()
        params = _request_params(self)
    except Exception:  # noqa: BLE001 - a request moto cannot parse is checked against "*"
        return "*"
    return request_resource(_signing_service(self), action, params, self.region, self.current_account)


def _signing_service(response: BaseResponse) -> str:
    """The service of the request's credential scope (``states``, not boto3's ``stepfunctions``):
    the prefix of its IAM actions."""
    scope = str(response.headers.get("Authorization") or "").partition("Credential=")[2].partition(",")[0]
    parts = scope.split("/")
    return parts[3] if len(parts) > 3 else response.boto3_service_name


def patch_moto() -> None:
    """Complete moto's IAM checks where the app depends on them (module docstring). Idempotent."""
    apply_once(
        __name__,
        _patch_resource_of_each_request,
        _patch_s3_delete_objects,
        _patch_json_auth_errors,
        _patch_signature_of_bodiless_requests,
    )


def _patch_resource_of_each_request() -> None:
    setattr(BaseResponse, "_determine_resource", _determine_resource)  # noqa: B010 - moto's hook


# --- Lambda's Invoke, answered by the local runtime ----------------------------------------------


def authorize_invoke(request: Request, function: Function) -> Response | None:
    """Authenticate an Invoke request and check ``lambda:InvokeFunction`` on the function, as
    Lambda does: None when allowed (or enforcement is off), else Lambda's error answer."""
    if not is_enforced():
        return None
    from moto.iam.access_control import IAMRequest  # noqa: PLC0415 - moto's own checker

    headers = dict(request.headers.items())
    if "Authorization" not in headers:
        return service_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    raw_uri = str(request.environ.get("RAW_URI") or request.full_path)
    try:
        checked = IAMRequest(
            account_id=LOCAL_ACCOUNT_ID,
            method=request.method,
            path=raw_uri.rstrip("?"),
            data={},
            body=request.get_data(),
            headers=headers,
            action="InvokeFunction",
        )
        checked.check_signature()
        checked.check_action_permitted(function.arn)
    except Exception as error:  # noqa: BLE001 - moto raises its HTTP error classes
        code = getattr(error, "code", 403)
        status = code if isinstance(code, int) else 403
        message = _message_of(str(getattr(error, "description", None) or error))
        if status == 403 and "not authorized" in message:
            # Lambda names the resource: "... is not authorized to perform: lambda:InvokeFunction on
            # resource: <function ARN> because no identity-based policy allows ..."
            message = message.replace(
                "lambda:InvokeFunction", f"lambda:InvokeFunction on resource: {function.arn}", 1
            )
            return service_error(403, "AccessDeniedException", message)
        return service_error(status, type(error).__name__.removesuffix("Error") or "AccessDenied", message)
    return None


def _message_of(description: str) -> str:
    """The <Message> of moto's XML error body, or the text as it is."""
    with contextlib.suppress(ElementTree.ParseError):
        root = ElementTree.fromstring(description)  # noqa: S314 - moto's own error body
        found = root.find(".//Message")
        if found is not None and found.text:
            return found.text
    return description


# --- the state machine's own service calls -------------------------------------------------------

_roles_of_executions: LocalIam | None = None


def sign_state_machine_calls_with(roles: LocalIam | None) -> None:
    """moto's ASL interpreter calls Lambda, EventBridge and Step Functions with fixed keys ("ak");
    on AWS those calls carry the execution's role (the state machine's, or a task's ``Credentials``
    role). Make them sign as that role, from ``roles``; a role it does not hold stays unsigned."""
    global _roles_of_executions  # noqa: PLW0603 - one local stack at a time per process
    _roles_of_executions = roles
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415

    from botocore.config import Config  # noqa: PLC0415
    from moto.settings import moto_server_port  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.state.exec import state_task  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.utils import boto_client  # noqa: PLC0415

    if getattr(boto_client, "_query_relay_signed", False):
        return
    original = boto_client.boto_client_for

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        role_arn = getattr(state_credentials, "role_arn", None)
        signer = _roles_of_executions.for_role_arn(role_arn) if _roles_of_executions and role_arn else None
        if signer is None:
            return original(region, service, state_credentials)
        # moto's own client settings (moto.stepfunctions.parser.asl.utils.boto_client), other keys.
        return boto3.client(
            service,  # type: ignore[call-overload]
            region_name=region,
            endpoint_url=f"http://localhost:{moto_server_port()}",
            aws_access_key_id=signer.access_key_id,
            aws_secret_access_key=signer.secret_access_key,
            aws_session_token=signer.session_token,
            config=Config(
                parameter_validation=False,
                retries={"max_attempts": 0, "total_max_attempts": 1},
                connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
                read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            ),
        )

    for module_info in pkgutil.walk_packages(state_task.__path__, f"{state_task.__name__}."):
        module = importlib.import_module(module_info.name)
        if getattr(module, "boto_client_for", None) is original:
            setattr(module, "boto_client_for", boto_client_for)  # noqa: B010 - patching moto
    setattr(boto_client, "boto_client_for", boto_client_for)  # noqa: B010
    setattr(boto_client, "_query_relay_signed", True)  # noqa: B010


def _patch_s3_delete_objects() -> None:
    """AWS authorises DeleteObjects as ``s3:DeleteObject`` on each key it names; moto checks it on
    the bucket, so a grant on ``bucket/*`` (the narrowest) would never match. Check every key."""
    from moto.s3.responses import S3Response  # noqa: PLC0415

    original = S3Response._authenticate_and_authorize_s3_action

    def authorize(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
        if is_enforced() and "Authorization" not in self.headers:
            _authorize_presigned(self, bucket_name, key_name)
            return
        if key_name is None and bucket_name and self.data.get("Action") == "DeleteObject" and is_enforced():
            for key in _keys_to_delete(self.body):
                original(self, bucket_name=bucket_name, key_name=key)
            return
        original(self, bucket_name=bucket_name, key_name=key_name)

    setattr(S3Response, "_authenticate_and_authorize_s3_action", authorize)  # noqa: B010 - patching moto


def _authorize_presigned(response: Any, bucket_name: str | None, key_name: str | None) -> None:
    """A presigned URL (SigV4 in the query string): verified and authorised as S3 does, as its
    signer. moto reads only the Authorization header and fails on these (a 500); a request with
    neither is anonymous, and the results bucket allows nothing anonymous."""
    from botocore.auth import S3SigV4QueryAuth  # noqa: PLC0415
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415
    from moto.iam.access_control import S3IAMRequest  # noqa: PLC0415
    from moto.s3.exceptions import S3AccessDeniedError, S3SignatureDoesNotMatchError  # noqa: PLC0415

    query = {key: values[-1] for key, values in parse_qs(urlsplit(response.uri).query).items()}
    signature = query.get("X-Amz-Signature")
    if not signature or "X-Amz-Credential" not in query:
        raise S3AccessDeniedError()
    credential, amz_date = query["X-Amz-Credential"], query.get("X-Amz-Date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires = int(query.get("X-Amz-Expires", "0"))
    except ValueError:
        raise S3AccessDeniedError() from None
    if datetime.now(UTC) > signed_at + timedelta(seconds=expires):
        raise S3AccessDeniedError()  # AWS: "Request has expired"
    host = str(response.headers.get("Host", ""))
    headers = {
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature={signature}"
        ),
        "X-Amz-Security-Token": query.get("X-Amz-Security-Token", ""),
        "X-Amz-Date": amz_date,
        "Host": host,
    }
    checked = S3IAMRequest(
        account_id=response.current_account,
        method=response.method,
        path=response.raw_path,
        data={},
        body=b"",
        headers=headers,
        action=response.data["Action"],
    )
    unsigned_query = "&".join(
        part for part in urlsplit(response.uri).query.split("&") if not part.startswith("X-Amz-Signature=")
    )
    request = AWSRequest(
        method=response.method,
        url=f"http://{host}{response.raw_path}?{unsigned_query}",
        headers={"host": host},
    )
    request.context["timestamp"] = amz_date
    region = credential.split("/")[2] if credential.count("/") >= 3 else LOCAL_REGION
    auth = S3SigV4QueryAuth(checked._access_key.create_credentials(), "s3", region, expires=expires)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if expected != signature:
        raise S3SignatureDoesNotMatchError()
    target = f"{bucket_name or '*'}/{key_name}" if key_name else (bucket_name or "*")
    checked.check_action_permitted(f"arn:{LOCAL_PARTITION}:s3:::{target}")


def _keys_to_delete(body: bytes | str) -> list[str]:
    """The keys of a DeleteObjects request body (``<Delete><Object><Key>``)."""
    text = body.decode() if isinstance(body, bytes) else body
    root = ElementTree.fromstring(text)  # noqa: S314 - the app's own request, parsed by moto too
    return [
        element.text or ""
        for element in root.iter()
        if element.tag.rpartition("}")[2] == "Key" and element.text is not None
    ]


# AWS's JSON protocols (DynamoDB, Step Functions, Secrets Manager, EventBridge, Scheduler) name
# these failures otherwise than moto's XML errors do.
_JSON_ERRORS = {
    "AccessDenied": "AccessDeniedException",
    "InvalidClientTokenId": "UnrecognizedClientException",
    "SignatureDoesNotMatch": "InvalidSignatureException",
}


def _patch_json_auth_errors() -> None:
    """Answer an authorisation failure of a JSON-protocol service as AWS does: HTTP 400 (403 for
    rest-json) with ``{"__type": "AccessDeniedException", "message": "User: ... is not authorized
    to perform: <action> on resource: <arn> because no identity-based policy allows the <action>
    action"}``; moto answers every service with its XML ``AccessDenied``."""
    from botocore.session import get_session  # noqa: PLC0415
    from moto.core.exceptions import JsonRESTError  # noqa: PLC0415

    original = BaseResponse._authenticate_and_authorize_normal_action
    protocols: dict[str, str] = {}

    def protocol_of(service: str) -> str:
        if service not in protocols:
            try:
                protocols[service] = str(get_session().get_service_model(service).metadata.get("protocol"))
            except Exception:  # noqa: BLE001 - a service botocore does not know keeps moto's answer
                protocols[service] = ""
        return protocols[service]

    def authorize(self: BaseResponse, resource: str = "*") -> None:
        try:
            for each in authorized_resources(resource):
                resource = each  # the one refused is named
                original(self, each)
        except Exception as error:
            error_type = getattr(error, "error_type", "")
            protocol = protocol_of(self.boto3_service_name)
            if error_type not in _JSON_ERRORS or protocol not in ("json", "rest-json"):
                raise
            message = str(getattr(error, "message", "") or error)
            if error_type == "AccessDenied" and resource != "*":
                action = message.rpartition("perform: ")[2]
                message = (
                    f"{message} on resource: {resource} because no identity-based policy allows the "
                    f"{action} action"
                )
            replaced = JsonRESTError(_JSON_ERRORS[error_type], message)
            replaced.code = 403 if protocol == "rest-json" else 400
            raise replaced from None

    setattr(BaseResponse, "_authenticate_and_authorize_normal_action", authorize)  # noqa: B010


def _patch_signature_of_bodiless_requests() -> None:
    """moto recomputes a signature over the query parameters *as a form body* when a request has
    no body (``data=self._body or self._data``), so every signed GET with a query string (Scheduler's
    GetSchedule, say) fails with a signature mismatch. SigV4 signs the body as sent: an empty one."""
    from moto.iam.access_control import IAMRequestBase  # noqa: PLC0415

    original = IAMRequestBase._create_aws_request

    def create_aws_request(self: Any) -> Any:
        request = original(self)
        if not self._body:
            request.data = b""
        return request

    setattr(IAMRequestBase, "_create_aws_request", create_aws_request)  # noqa: B010 - patching moto
