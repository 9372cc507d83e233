"""Control of jobs and schedules from outside the state machine: the HTTP API's logic (``jobs``,
``schedules``), its request/response models and the mapping of domain errors to HTTP answers.

Handlers (functions/api, functions/stopped) only wire these to their events.
"""
