"""The control plane's environment, parsed once (see ``query_relay.settings`` for the pattern)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from query_relay.limits import SCHEDULER_NAME_PATTERN
from query_relay.settings import SettingsError


class ControlSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    state_machine_arn: str = Field(pattern=r"^arn:[\w-]+:states:[\w-]+:\d{12}:stateMachine:[\w.-]+$")
    event_bus_name: str = Field(default="default", min_length=1)
    schedule_group: str = Field(default="default", pattern=SCHEDULER_NAME_PATTERN)
    # The role EventBridge Scheduler assumes to start executions (empty: schedules are unavailable).
    scheduler_role_arn: str = ""
    # Presigned download links live this long (on AWS also capped by the function's role session).
    link_expiry_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)


ENVIRONMENT = {
    "state_machine_arn": "STATE_MACHINE_ARN",
    "event_bus_name": "EVENT_BUS_NAME",
    "schedule_group": "SCHEDULE_GROUP",
    "scheduler_role_arn": "SCHEDULER_ROLE_ARN",
    "link_expiry_seconds": "LINK_EXPIRY_SECONDS",
}


@lru_cache(maxsize=1)
def get_control_settings() -> ControlSettings:
    values = {field: os.environ[name] for field, name in ENVIRONMENT.items() if name in os.environ}
    try:
        return ControlSettings.model_validate(values)
    except ValidationError as error:
        problems = ", ".join(
            f"{ENVIRONMENT.get(str(problem['loc'][0]), str(problem['loc'][0]))}: {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise SettingsError(f"invalid environment: {problems}") from None
