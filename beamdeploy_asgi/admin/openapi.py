"""The admin API's OpenAPI description, served at /openapi.json."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
DEPLOYMENT = {"$ref": "#/components/schemas/Deployment"}
HOST = {"$ref": "#/components/schemas/Host"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meanings = {
        400: "malformed request",
        401: "missing or wrong token",
        403: "address or path not allowed",
        404: "no such route or deployment",
        408: "the request body did not arrive in time (upload_timeout for an artifact)",
        409: "a deployment is already running, or no release to roll back to",
        413: "body too large",
        415: "wrong content type",
        422: "the release is not valid, or (with wait) could not be promoted",
        503: "the arbiter is not reachable",
    }
    return {str(code): _json(ERROR, meanings[code]) for code in codes}


AUTHED = (401, 403, 404, 503)
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "a phase, then 'end' (or 'error')"},
        "data": {"type": "string", "description": "JSON: the phase's event, or the deployment"},
    },
}
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean"},
    "description": "answer when the deployment has ended",
}
DRY_RUN = {
    "name": "dry_run",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean"},
    "description": "plan and check only; no worker is touched",
}
SUSPEND_TIMEOUT = {
    "name": "suspend_timeout",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 60},
    "description": "seconds the workers wait for running requests before the code changes "
    "(default 3)",
}
OPTION_SCHEMAS: dict[str, dict[str, Any]] = {
    "strategy": {
        "type": "string",
        "enum": ["blue-green", "rolling"],
        "description": "blue-green boots a whole new generation; rolling replaces a few "
        "workers at a time (default: the server's --strategy)",
    },
    "max_surge": {
        "type": "integer",
        "minimum": 1,
        "maximum": 64,
        "description": "rolling: new workers booted beyond the generation's size at a time",
    },
    "bake": {
        "type": "number",
        "minimum": 0,
        "maximum": 86400,
        "description": "seconds the old generation stays booted after the promotion; too "
        "many 5xx or a crash meanwhile rolls back to it (blue-green only)",
    },
    "bake_max_error_rate": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "exclusiveMaximum": True,
        "description": "the share of 5xx answers, over at least 20, that rolls back",
    },
}
OPTIONS = [
    {"name": name, "in": "query", "required": False, "schema": schema}
    for name, schema in OPTION_SCHEMAS.items()
]
STARTED = {
    **_json(DEPLOYMENT, "the deployment started"),
    "headers": {"Location": {"schema": {"type": "string"}, "description": "where to follow it"}},
}


def openapi_schema(prefix: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "beamdeploy admin API",
            "version": "1",
            "description": "Blue-green deployments of this service. Every route but /health "
            "needs 'Authorization: Bearer <token>'.",
        },
        "servers": [{"url": prefix or "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "Whether this host should get traffic (200) or not (503)",
                    "description": "503 once the host is marked draining (POST /drain), "
                    "and from a worker that is stopping. For load balancers: no token.",
                    "security": [],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Health"}, "serving"),
                        "503": _json({"$ref": "#/components/schemas/Health"}, "draining"),
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "Generations, releases, workers and recent deployments",
                    "responses": {
                        "200": _json({"type": "object"}, "the arbiter's status"),
                        **_errors(*AUTHED),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of the arbiter: deployments, workers, reloads",
                    "description": "Rendered by the arbiter (it needs beamdeploy-asgi[metrics]). "
                    "Clients in --metrics-allow need no token. See docs/metrics.md.",
                    "responses": {
                        "200": {
                            "description": "the Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(*AUTHED),
                    },
                }
            },
            "/upgrade": {
                "post": {
                    "summary": "Swap the service to a release, blue-green or rolling",
                    "description": "Strategy and bake options come as query parameters, "
                    "or as fields of the JSON body. See docs/strategies.md.",
                    "parameters": [WAIT, *OPTIONS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/UpgradeRequest"}
                            },
                            "application/gzip": {
                                "schema": {"type": "string", "format": "binary"},
                            },
                        },
                    },
                    "responses": {
                        "200": _json(DEPLOYMENT, "with wait: the deployment succeeded"),
                        "202": STARTED,
                        **_errors(400, 408, 409, 413, 415, 422, *AUTHED),
                        "409": _json(
                            ERROR,
                            "a deployment is already running (upgrade_in_progress), or another "
                            "artifact is being uploaded (upload_in_progress); an upload is "
                            "refused before its body is read",
                        ),
                    },
                }
            },
            "/hot-reload": {
                "post": {
                    "summary": "Patch a release's changed app code into the running workers",
                    "description": "All workers or none; whatever cannot be patched in place "
                    "is refused, nothing applied (422, its error lists file:line: rule: why). "
                    "See docs/hot-reload.md.",
                    "parameters": [WAIT, DRY_RUN, SUSPEND_TIMEOUT],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/UpgradeRequest"}
                            },
                            "application/gzip": {
                                "schema": {"type": "string", "format": "binary"},
                            },
                        },
                    },
                    "responses": {
                        "200": _json(DEPLOYMENT, "with wait: the reload succeeded"),
                        "202": STARTED,
                        **_errors(400, 408, 409, 413, 415, 422, *AUTHED),
                    },
                }
            },
            "/rollback": {
                "post": {
                    "summary": "Swap back to the previous release, or to a kept one by version",
                    "parameters": [WAIT, *OPTIONS],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RollbackRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json(DEPLOYMENT, "with wait: the rollback succeeded"),
                        "202": STARTED,
                        **_errors(400, 408, 409, 413, 422, *AUTHED),
                    },
                }
            },
            "/drain": {
                "post": {
                    "summary": "Mark the host draining: /health answers 503, the workers "
                    "still serve",
                    "responses": {
                        "200": _json(HOST, "the host's state"),
                        **_errors(*AUTHED),
                    },
                }
            },
            "/undrain": {
                "post": {
                    "summary": "Remove the drain mark: /health answers 200 again",
                    "responses": {
                        "200": _json(HOST, "the host's state"),
                        **_errors(*AUTHED),
                    },
                }
            },
            "/deployments": {
                "get": {
                    "summary": "Recent deployments, newest first",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "deployments": {"type": "array", "items": DEPLOYMENT}
                                },
                            },
                            "recent deployments",
                        ),
                        **_errors(*AUTHED),
                    },
                }
            },
            "/deployments/{id}": {
                "get": {
                    "summary": "One deployment",
                    "parameters": [ID],
                    "responses": {"200": _json(DEPLOYMENT, "the deployment"), **_errors(*AUTHED)},
                }
            },
            "/deployments/{id}/events": {
                "get": {
                    "summary": "Server-sent events of the deployment's phases, until it ends",
                    "parameters": [ID],
                    "responses": {
                        "200": {
                            "description": "one event per phase, then 'end' with the deployment",
                            "content": {"text/event-stream": {"schema": SSE_EVENT}},
                        },
                        **_errors(*AUTHED),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {
                        "200": _json({"type": "object"}, "OpenAPI 3"),
                        **_errors(*AUTHED),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["serving", "draining"]},
                        "reason": {"type": "string", "description": "why it drains"},
                        "release": {"type": "string", "description": "the version served"},
                    },
                },
                "Host": {
                    "type": "object",
                    "required": ["draining", "since"],
                    "properties": {
                        "draining": {"type": "boolean"},
                        "since": {
                            "type": "number",
                            "nullable": True,
                            "description": "when it was marked draining (unix time)",
                        },
                    },
                },
                "UpgradeRequest": {
                    "type": "object",
                    "required": ["release"],
                    "properties": {
                        "release": {
                            "type": "string",
                            "minLength": 1,
                            "description": "a release directory inside a --release-dir "
                            "(absolute, or relative to one)",
                        },
                        **OPTION_SCHEMAS,
                    },
                },
                "RollbackRequest": {
                    "type": "object",
                    "properties": {
                        "to": {
                            "type": "string",
                            "minLength": 1,
                            "description": "the version of a kept release",
                        },
                        **OPTION_SCHEMAS,
                    },
                },
                "Release": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "app": {"type": "string"},
                        "path": {"type": "string", "nullable": True},
                        "python": {"type": "string"},
                    },
                },
                "Deployment": {
                    "type": "object",
                    "required": ["id", "kind", "phase", "started_at", "outcome", "error"],
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "from": {
                            "allOf": [{"$ref": "#/components/schemas/Release"}],
                            "nullable": True,
                        },
                        "to": {"$ref": "#/components/schemas/Release"},
                        "generation": {"type": "integer"},
                        "phase": {"type": "string"},
                        "started_at": {"type": "number"},
                        "ended_at": {"type": "number", "nullable": True},
                        "drained_at": {"type": "number", "nullable": True},
                        "outcome": {
                            "type": "string",
                            "nullable": True,
                            "enum": ["succeeded", "failed", None],
                        },
                        "error": {"type": "string", "nullable": True},
                        "timings": {"type": "object"},
                        "events": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
    }
