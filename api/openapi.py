"""``GET /openapi.json``: the OpenAPI 3.1 document, its schemas generated from the models."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api import batches, forks, schemas

bp = Blueprint("openapi", __name__)

_INPUT_MODELS: tuple[type[BaseModel], ...] = (
    schemas.RunCreate, schemas.EndpointCreate, schemas.HookSourceCreate, schemas.HookSourceRotate,
    schemas.ApiKeyCreate, schemas.WaitpointComplete, schemas.ScheduleCreate,
    schemas.ScheduleUpdate, forks.ForkCreate, batches.BatchCreate,
)
_OUTPUT_MODELS: tuple[type[BaseModel], ...] = (
    schemas.RunOut, schemas.RunPage, schemas.AttemptList, schemas.EventList,
    schemas.ProblemOut, schemas.HealthOut, schemas.EndpointOut, schemas.EndpointList,
    schemas.SecretOut, schemas.DeliveryOut, schemas.DeliveryPage, schemas.HookSourceOut,
    schemas.HookSourceList, schemas.ApiKeyOut, schemas.ApiKeyList, schemas.SessionOut,
    schemas.StepList, schemas.UsageOut, schemas.WaitpointOut, schemas.WaitpointList,
    schemas.ScheduleOut, schemas.ScheduleList, batches.BatchOut, batches.BatchCreated,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    schema = _ref(schemas.ProblemOut)
    return {"description": description, "content": {"application/problem+json": {"schema": schema}}}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema,
            "description": description}


_RUN_ID = _param("run_id", "path", {"type": "string"}, "The run's id.", required=True)
_ENDPOINT_ID = _param("endpoint_id", "path", {"type": "string"}, "The endpoint's id.",
                      required=True)
_DELIVERY_ID = _param("delivery_id", "path", {"type": "string"}, "The delivery's id.",
                      required=True)
_AUTH_ERRORS = {"401": _problem("Missing, unknown or revoked API key."),
                "429": _problem("Over the key's request rate (Retry-After says when).")}
_FORBIDDEN = {"403": _problem("The credential lacks the scope this needs.")}
_IDEMPOTENCY_KEY = _param("Idempotency-Key", "header", {"type": "string", "maxLength": 255},
                          "Repeat the request safely: the same key and body answer with the "
                          "first request's result (Idempotent-Replayed: true); another body "
                          "is 422.")
_NOT_FOUND = {"404": _problem("No such run for this tenant.")}


def _paths() -> dict[str, Any]:
    run = _json(schemas.RunOut, "The run.")
    return {
        "/health": {"get": {
            "summary": "Check the database, the broker and the workers.", "security": [],
            "responses": {"200": _json(schemas.HealthOut, "Every check passed."),
                          "503": _json(schemas.HealthOut, "At least one check failed.")},
        }},
        "/health/live": {"get": {
            "summary": "Liveness for orchestrators: the process answers (no dependency checked).",
            "security": [], "responses": {"200": {"description": "Alive."}},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics: runs, durations, retries, dead letters, queues, "
                       "workers, deliveries, inbound webhooks, HTTP requests.",
            "security": [], "responses": {"200": {"description": "Prometheus text format."},
                                          "401": _problem("AGENTQ_METRICS_TOKEN is set and "
                                                          "was not sent.")},
        }},
        "/openapi.json": {"get": {
            "summary": "This document.", "security": [],
            "responses": {"200": {"description": "The OpenAPI document."}},
        }},
        "/v1/runs": {
            "post": {
                "summary": "Submit a run.",
                "parameters": [_param("wait", "query", {"type": "number", "minimum": 0,
                                                        "maximum": 30},
                                      "Seconds to wait for the run to finish (200 if it did)."),
                               _IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(schemas.RunCreate)}}},
                "responses": {
                    "200": _json(schemas.RunOut, "The run finished within ?wait."),
                    "202": _json(schemas.RunOut, "The run is queued (or still going)."),
                    "400": _problem("The body is not valid JSON."),
                    **_AUTH_ERRORS,
                    "413": _problem("The body is over the size limit."),
                    "415": _problem("The body is not JSON."),
                    "422": _problem("Unknown agent, bad or unknown field; errors lists each."),
                    "409": _problem("multitask: reject, and the session has a run going."),
                    **_FORBIDDEN,
                },
            },
            "get": {
                "summary": "List the tenant's runs, newest first.",
                "parameters": [
                    _param("status", "query", {"type": "string"}, "Only runs in this status."),
                    _param("agent", "query", {"type": "string"}, "Only runs of this agent."),
                    _param("session_id", "query", {"type": "string"}, "Only this session."),
                    _param("parent_id", "query", {"type": "string"},
                           "Only this run's children."),
                    _param("batch_id", "query", {"type": "string"}, "Only this batch's runs."),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100},
                           "Page size (default 20)."),
                    _param("cursor", "query", {"type": "string"}, "next_cursor of the last page."),
                ],
                "responses": {"200": _json(schemas.RunPage, "A page of runs."), **_AUTH_ERRORS,
                              "422": _problem("A bad filter or cursor.")},
            },
        },
        "/v1/runs/{run_id}": {"get": {
            "summary": "Read a run (Retry-After: 2 while it is not finished).",
            "parameters": [_RUN_ID],
            "responses": {"200": run, **_AUTH_ERRORS, **_NOT_FOUND},
        }},
        "/v1/runs/{run_id}/cancel": {"post": {
            "summary": "Cancel a run: queued or retrying ones never start; a running one is "
                       "asked to stop and terminated after a grace period. Idempotent.",
            "parameters": [_RUN_ID],
            "responses": {"202": _json(schemas.RunOut, "The run (cancelled, or stopping)."),
                          **_AUTH_ERRORS, **_NOT_FOUND,
                          "409": _problem("The run already ended otherwise.")},
        }},
        "/v1/runs/{run_id}/replay": {"post": {
            "summary": "Queue a failed, dead-lettered, cancelled or expired run again "
                       "(attempts kept).",
            "parameters": [_RUN_ID],
            "responses": {"202": _json(schemas.RunOut, "The run, queued again."),
                          **_AUTH_ERRORS, **_NOT_FOUND,
                          "409": _problem("The run is not failed, dead-lettered, cancelled or "
                                          "expired.")},
        }},
        "/v1/runs/{run_id}/fork": {"post": {
            "summary": "Fork a run (in any status) from one of its steps: a new run of its "
                       "agent, options and input (or a new input) that reuses the steps it "
                       "recorded before from_step (their results, durations and usage, not "
                       "billed again; attempt 0) and runs from there. The fork has "
                       "forked_from: {run_id, step}; no session, parent or schedule.",
            "parameters": [_RUN_ID, _IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(forks.ForkCreate)}}},
            "responses": {"202": _json(schemas.RunOut, "The fork, queued."),
                          "400": _problem("The body is not valid JSON."), **_AUTH_ERRORS,
                          **_NOT_FOUND, **_FORBIDDEN,
                          "422": _problem("The run has no such step (errors lists its steps "
                                          "under from_step), or a bad or unknown field."),
                          "413": _problem("The body is over the size limit."),
                          "415": _problem("The body is not JSON.")},
        }},
        "/v1/runs/{run_id}/attempts": {"get": {
            "summary": "Every attempt of a run, oldest first.",
            "parameters": [_RUN_ID],
            "responses": {"200": _json(schemas.AttemptList, "The attempts."), **_AUTH_ERRORS,
                          **_NOT_FOUND},
        }},
        "/v1/runs/{run_id}/children": {"get": {
            "summary": "The run's children (ctx.start), oldest first.",
            "parameters": [
                _RUN_ID,
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200},
                       "Page size (default 50)."),
                _param("cursor", "query", {"type": "string"}, "next_cursor of the last page."),
            ],
            "responses": {"200": _json(schemas.RunPage, "A page of the run's children."),
                          **_AUTH_ERRORS, **_NOT_FOUND},
        }},
        "/v1/runs/{run_id}/steps": {"get": {
            "summary": "The run's finished durable steps (ctx.step, ctx.llm), in the order "
                       "they finished; later attempts reuse these instead of running them.",
            "parameters": [_RUN_ID],
            "responses": {"200": _json(schemas.StepList, "The steps."), **_AUTH_ERRORS,
                          **_NOT_FOUND},
        }},
        "/v1/runs/{run_id}/waitpoints": {"get": {
            "summary": "The run's waitpoints (ctx.wait_for, ctx.sleep), oldest first; each "
                       "still waiting has its signed url.",
            "parameters": [_RUN_ID],
            "responses": {"200": _json(schemas.WaitpointList, "The waitpoints."),
                          **_AUTH_ERRORS, **_NOT_FOUND},
        }},
        "/v1/runs/{run_id}/waitpoints/{name}": {"post": {
            "summary": "Complete a waitpoint with {data}: the waiting run is queued again and "
                       "its ctx.wait_for returns the data.",
            "parameters": [_RUN_ID, _param("name", "path", {"type": "string"},
                                           "The waitpoint's name.", required=True),
                           _IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(schemas.WaitpointComplete)}}},
            "responses": {"202": _json(schemas.WaitpointOut, "The waitpoint, completed."),
                          **_AUTH_ERRORS, **_FORBIDDEN,
                          "404": _problem("No such run or waitpoint for this tenant."),
                          "409": _problem("Already completed, timed out or cancelled, or a "
                                          "sleep."),
                          "422": _problem("The data does not match the waitpoint's schema; "
                                          "errors lists each problem.")},
        }},
        "/waitpoints/{token}": {
            "get": {
                "summary": "The signed link's page: the prompt and a form to answer it (a GET "
                           "completes nothing).", "security": [],
                "parameters": [_param("token", "path", {"type": "string"},
                                      "The waitpoint's signed, single-use token.", required=True)],
                "responses": {"200": {"description": "HTML."},
                              "404": _problem("A forged or altered link."),
                              "410": {"description": "Expired, or already answered."}},
            },
            "post": {
                "summary": "Complete the waitpoint the signed link names, without an API key "
                           "(single-use; it expires at the waitpoint's deadline).",
                "security": [],
                "parameters": [_param("token", "path", {"type": "string"},
                                      "The waitpoint's signed, single-use token.", required=True)],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(schemas.WaitpointComplete)}}},
                "responses": {"202": _json(schemas.WaitpointOut, "The waitpoint, completed."),
                              "404": _problem("A forged or altered link."),
                              "409": _problem("Already used (completed), or cancelled."),
                              "410": _problem("The link has expired."),
                              "422": _problem("The data does not match the schema.")},
            },
        },
        "/v1/usage": {"get": {
            "summary": "The tenant's LLM use today (UTC) and over the last 7 days, and its "
                       "daily token budget (AGENTQ_TENANT_DAILY_TOKENS).",
            "responses": {"200": _json(schemas.UsageOut, "The usage."), **_AUTH_ERRORS},
        }},
        "/v1/runs/{run_id}/events": {"get": {
            "summary": "The run's event log after a seq: JSON, or with 'Accept: "
                       "text/event-stream' a live Server-Sent Events stream (id: seq, "
                       "event: type, data: JSON) that resumes after Last-Event-ID and ends "
                       "after the terminal event.",
            "parameters": [
                _RUN_ID,
                _param("after", "query", {"type": "integer", "minimum": 0},
                       "Only events with a greater seq."),
                _param("tokens", "query", {"type": "boolean"},
                       "SSE: add the streamed LLM calls' text as it is written: 'event: "
                       "token' {step, i, text} and 'event: token.reset' {step}, frames with "
                       "no id. A token frame's text is the call's pieces from number i on: "
                       "i 1 sets the step's text, any other i appends; on (re)connect each "
                       "call in progress comes first as one frame with i 1."),
                _param("Last-Event-ID", "header", {"type": "string"},
                       "SSE: resume after this seq (wins over ?after)."),
            ],
            "responses": {"200": {
                "description": "The events, oldest first.",
                "content": {
                    "application/json": {"schema": _ref(schemas.EventList)},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            }, **_AUTH_ERRORS, **_NOT_FOUND},
        }},
        **_webhook_paths(),
        **_schedule_paths(),
        **_batch_paths(),
        **_inbound_paths(),
        **_account_paths(),
        "/v1/ws": {"get": {
            "summary": "WebSocket: submit runs ({type: run}), follow them ({type: subscribe, "
                       "run_id, after, tokens}) and cancel them ({type: cancel}); events arrive "
                       "as {type: event, run_id, seq, event, data}, and with tokens the "
                       "streamed LLM calls' text as {type: token, run_id, step, i, text} and "
                       "{type: token.reset, run_id, step}. Authenticate with the "
                       "Authorization header or the subprotocol 'bearer.<key>'.",
            "responses": {"101": {"description": "Switching protocols."}, **_AUTH_ERRORS},
        }},
    }


def _webhook_paths() -> dict[str, Any]:
    endpoint = _json(schemas.EndpointOut, "The endpoint (its secret only when made or rotated).")
    missing = {"404": _problem("No such endpoint for this tenant.")}
    no_delivery = {"404": _problem("No such delivery for this tenant.")}
    return {
        "/v1/webhook-endpoints": {
            "post": {
                "summary": "Add an endpoint; the answer shows its signing secret, once (a "
                           "repeat with the same Idempotency-Key shows it as null).",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(schemas.EndpointCreate)}}},
                "responses": {"201": endpoint, **_AUTH_ERRORS,
                              "422": _problem("A bad URL (internal networks are refused) or "
                                              "event type.")},
            },
            "get": {"summary": "The tenant's endpoints (without secrets).",
                    "responses": {"200": _json(schemas.EndpointList, "The endpoints."),
                                  **_AUTH_ERRORS}},
        },
        "/v1/webhook-endpoints/{endpoint_id}": {
            "get": {"summary": "One endpoint.", "parameters": [_ENDPOINT_ID],
                    "responses": {"200": endpoint, **_AUTH_ERRORS, **missing}},
            "delete": {"summary": "Stop delivering to it (past deliveries are kept).",
                       "parameters": [_ENDPOINT_ID],
                       "responses": {"204": {"description": "Deleted."}, **_AUTH_ERRORS,
                                     **missing}},
        },
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret": {"post": {
            "summary": "A new secret; the old one keeps signing beside it for 24 h.",
            "parameters": [_ENDPOINT_ID],
            "responses": {"200": endpoint, **_AUTH_ERRORS, **missing},
        }},
        "/v1/webhook-secret": {"post": {
            "summary": "Make the tenant's secret that signs deliveries to runs' webhook_url "
                       "(shown once).",
            "responses": {"201": _json(schemas.SecretOut, "The secret."), **_AUTH_ERRORS,
                          "409": _problem("It exists already: rotate it.")},
        }},
        "/v1/webhook-secret/rotate": {"post": {
            "summary": "Rotate the tenant's secret; the old one keeps signing for 24 h.",
            "responses": {"200": _json(schemas.SecretOut, "The new secret."), **_AUTH_ERRORS,
                          "404": _problem("There is no secret yet.")},
        }},
        "/v1/deliveries": {"get": {
            "summary": "Outbound webhook deliveries, newest first; admin.",
            "parameters": [
                _param("run_id", "query", {"type": "string"}, "Only this run's."),
                _param("endpoint_id", "query", {"type": "string"}, "Only this endpoint's."),
                _param("status", "query", {"type": "string",
                                           "enum": ["pending", "delivered", "retrying", "dead"]},
                       "Only in this status."),
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200},
                       "Page size (default 50)."),
                _param("cursor", "query", {"type": "string"}, "next_cursor of the last page."),
            ],
            "responses": {"200": _json(schemas.DeliveryPage, "A page of deliveries."),
                          **_AUTH_ERRORS, **_FORBIDDEN},
        }},
        "/v1/deliveries/{delivery_id}": {"get": {
            "summary": "One delivery, with every attempt (status, latency, error, answer); "
                       "admin.",
            "parameters": [_DELIVERY_ID],
            "responses": {"200": _json(schemas.DeliveryOut, "The delivery."), **_AUTH_ERRORS,
                          **_FORBIDDEN, **no_delivery},
        }},
        "/v1/deliveries/{delivery_id}/retry": {"post": {
            "summary": "Send it again now (a dead one gets a new round of the schedule; its "
                       "disabled endpoint is enabled again); admin.",
            "parameters": [_DELIVERY_ID],
            "responses": {"202": _json(schemas.DeliveryOut, "The delivery, pending."),
                          **_AUTH_ERRORS, **_FORBIDDEN, **no_delivery,
                          "409": _problem("It was delivered already, its endpoint was "
                                          "deleted, or an attempt is being sent now.")},
        }},
    }


def _account_paths() -> dict[str, Any]:
    key_id = _param("key_id", "path", {"type": "string"}, "The key's id or prefix.",
                    required=True)
    session_id = _param("session_id", "path", {"type": "string"}, "The session's id.",
                        required=True)
    no_session = {"404": _problem("No such session for this tenant.")}
    return {
        "/v1/sessions/{session_id}": {
            "get": {"summary": "A conversation's state, its version and its runs.",
                    "parameters": [session_id],
                    "responses": {"200": _json(schemas.SessionOut, "The session."),
                                  **_AUTH_ERRORS, **no_session}},
            "delete": {"summary": "Forget the session's state (its runs are kept).",
                       "parameters": [session_id],
                       "responses": {"204": {"description": "Forgotten."}, **_AUTH_ERRORS,
                                     **no_session}},
        },
        "/v1/api-keys": {
            "get": {"summary": "The tenant's keys (prefix, name, scopes, last used); admin.",
                    "responses": {"200": _json(schemas.ApiKeyList, "The keys."),
                                  **_AUTH_ERRORS, **_FORBIDDEN}},
            "post": {"summary": "A new key, shown once (a repeat with the same "
                             "Idempotency-Key shows it as null); admin.",
                     "parameters": [_IDEMPOTENCY_KEY],
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref(schemas.ApiKeyCreate)}}},
                     "responses": {"201": _json(schemas.ApiKeyOut, "The key."), **_AUTH_ERRORS,
                                   **_FORBIDDEN}},
        },
        "/v1/api-keys/{key_id}": {"delete": {
            "summary": "Revoke a key; it stops working at once; admin.",
            "parameters": [key_id],
            "responses": {"204": {"description": "Revoked."}, **_AUTH_ERRORS, **_FORBIDDEN,
                          "404": _problem("No such key for this tenant.")},
        }},
    }


def _batch_paths() -> dict[str, Any]:
    created = "The batch and a run per item, in the items' order"
    return {
        "/v1/runs/batch": {"post": {
            "summary": "Submit up to 1,000 runs in one request and one "
                       "transaction: each item is a POST /v1/runs body with its own "
                       "idempotency_key (an item whose key was seen before is answered with "
                       "the run it made, not made again). One invalid item refuses them all "
                       "(nothing is made). The tenant's queued cap is taken once for all: a "
                       "batch over it is refused whole. batch.completed (webhook) is sent "
                       "once, when the last of its runs ends. A request whose items are all "
                       "an earlier batch's answers with that batch (Idempotent-Replayed).",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(batches.BatchCreate)}}},
            "responses": {
                "202": _json(batches.BatchCreated, f"{created}."),
                "200": _json(batches.BatchCreated, f"{created}: a repeat of a batch "
                             "that has completed."),
                "400": _problem("The body is not valid JSON."), **_AUTH_ERRORS, **_FORBIDDEN,
                "409": _problem("An item's idempotency_key is held by a request in progress."),
                "413": _problem("The body is over the size limit."),
                "415": _problem("The body is not JSON."),
                "422": _problem("No items, too many, or invalid ones: errors names each "
                                "problem by its item (items[3].input); an idempotency_key "
                                "used with another request, or twice in the batch."),
            },
        }},
        "/v1/batches/{batch_id}": {"get": {
            "summary": "A batch, its runs counted by status (Retry-After: 2 until it has "
                       "completed); its runs: GET /v1/runs?batch_id=.",
            "parameters": [_param("batch_id", "path", {"type": "string"}, "The batch's id.",
                                  required=True)],
            "responses": {"200": _json(batches.BatchOut, "The batch."), **_AUTH_ERRORS,
                          "404": _problem("No such batch for this tenant.")},
        }},
    }


def _schedule_paths() -> dict[str, Any]:
    schedule = _json(schemas.ScheduleOut, "The schedule.")
    schedule_id = _param("schedule_id", "path", {"type": "string"}, "The schedule's id.",
                         required=True)
    missing = {"404": _problem("No such schedule for this tenant.")}
    body = {"required": True, "content": {"application/json": {
        "schema": _ref(schemas.ScheduleCreate)}}}
    return {
        "/v1/schedules": {
            "get": {"summary": "The tenant's schedules, newest first (paged by next_cursor).",
                    "parameters": [_param("limit", "query", {"type": "integer"}, "At most "
                                          "100."),
                                   _param("cursor", "query", {"type": "string"},
                                          "next_cursor of the previous page.")],
                    "responses": {"200": _json(schemas.ScheduleList, "The schedules."),
                                  **_AUTH_ERRORS}},
            "post": {"summary": "An agent run by cron (in timezone) or every_s seconds, fired "
                                "by beat: each slot makes one run (schedule_id, "
                                "scheduled_for), whatever the number of beats; slots missed "
                                "by more than catchup_s are skipped; overlap says what a slot "
                                "does while an earlier run is going.",
                     "parameters": [_IDEMPOTENCY_KEY], "requestBody": body,
                     "responses": {"201": schedule, **_AUTH_ERRORS,
                                   "422": _problem("A bad cron, time zone, agent or input; "
                                                   "errors lists each.")}},
        },
        "/v1/schedules/{schedule_id}": {
            "get": {"summary": "One schedule.", "parameters": [schedule_id],
                    "responses": {"200": schedule, **_AUTH_ERRORS, **missing}},
            "patch": {"summary": "Change what is given (pause: paused true); a new timing or "
                                 "a resume counts from now.",
                      "parameters": [schedule_id],
                      "requestBody": {"required": True, "content": {"application/json": {
                          "schema": _ref(schemas.ScheduleUpdate)}}},
                      "responses": {"200": schedule, **_AUTH_ERRORS, **missing,
                                    "422": _problem("A bad field; errors lists each.")}},
            "delete": {"summary": "Delete the schedule (its runs stay).",
                       "parameters": [schedule_id],
                       "responses": {"204": {"description": "Deleted."}, **_AUTH_ERRORS,
                                     **missing}},
        },
        "/v1/schedules/{schedule_id}/trigger": {"post": {
            "summary": "Fire now, outside the timing (overlap still holds).",
            "parameters": [schedule_id, _IDEMPOTENCY_KEY],
            "responses": {"202": _json(schemas.RunOut, "The run made."), **_AUTH_ERRORS,
                          **missing,
                          "409": _problem("overlap skip (or buffer_one) and a run is going.")},
        }},
    }


def _inbound_paths() -> dict[str, Any]:
    source = _json(schemas.HookSourceOut, "The hook source (never its secret).")
    source_id = _param("source_id", "path", {"type": "string"}, "The hook source's id.",
                       required=True)
    missing = {"404": _problem("No such hook source for this tenant.")}

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}

    return {
        "/v1/hook-sources": {
            "post": {"summary": "Let a platform's signed events start runs of an agent; its "
                                "url is where the platform delivers.",
                     "requestBody": body(schemas.HookSourceCreate),
                     "responses": {"201": source, **_AUTH_ERRORS,
                                   "422": _problem("No secret, one too short to be safe, or "
                                                   "an unknown agent.")}},
            "get": {"summary": "The tenant's hook sources.",
                    "responses": {"200": _json(schemas.HookSourceList, "The sources."),
                                  **_AUTH_ERRORS}},
        },
        "/v1/hook-sources/{source_id}": {
            "get": {"summary": "One hook source.", "parameters": [source_id],
                    "responses": {"200": source, **_AUTH_ERRORS, **missing}},
            "delete": {"summary": "Stop accepting its deliveries.", "parameters": [source_id],
                       "responses": {"204": {"description": "Deleted."}, **_AUTH_ERRORS,
                                     **missing}},
        },
        "/v1/hook-sources/{source_id}/rotate-secret": {"post": {
            "summary": "Take the platform's new secret; the old one is accepted for 24 h.",
            "parameters": [source_id], "requestBody": body(schemas.HookSourceRotate),
            "responses": {"200": source, **_AUTH_ERRORS, **missing},
        }},
        "/hooks/{source_id}": {"post": {
            "summary": "A platform's delivery (GitHub, Slack, Stripe, Standard Webhooks). No "
                       "API key: the signature over the raw body is the credential. Answers "
                       "200 {run_id} before the agent starts; a delivery seen before answers "
                       "with the first one's run; Slack's url_verification and GitHub's ping "
                       "are answered; a Slack button whose value names a waitpoint "
                       "({run_id, waitpoint, data}) completes it and starts no run.",
            "security": [], "parameters": [source_id],
            "responses": {
                "200": {"description": "{run_id, duplicate}, {ignored: true}, a handshake "
                                       "answer, or a Slack message for a button press."},
                "400": _problem("Signed, but unreadable."),
                "401": _problem("Bad signature or stale timestamp; nothing was stored."),
                "404": _problem("No such hook."),
                "413": _problem("The body is over the size limit."),
            },
        }},
    }


@cache
def document() -> dict[str, Any]:
    """Build the document once per process."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _INPUT_MODELS),
        *((model, "serialization") for model in _OUTPUT_MODELS),
    ]
    _, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "agentq", "version": version("agentq"),
                 "description": "Run slow LLM agents behind an HTTP API, reliably."},
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())
