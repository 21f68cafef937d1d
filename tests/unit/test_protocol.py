"""The arbiter<->worker and client<->arbiter contract, on its own."""

from __future__ import annotations

import dataclasses
import json

import pytest

from beamdeploy_asgi.protocol import (
    PROTOCOL_VERSION,
    Event,
    ProtocolMismatch,
    WorkerSpec,
    rollback_request,
    state_dir_path,
    upgrade_request,
)

SPEC = WorkerSpec(
    generation=7,
    age=3,
    arbiter_pid=42,
    release={"name": "demo", "version": "1.0"},
    from_environment=False,
    pythonpath=["/srv/r/app"],
    argv=["--workers", "2"],
    listeners=[5],
    heartbeat_fd=6,
    channel_fd=7,
    admin=True,
)


def test_a_spec_survives_the_environment():
    assert WorkerSpec.from_json(SPEC.to_json()) == SPEC
    assert json.loads(SPEC.to_json())["protocol"] == PROTOCOL_VERSION


def test_the_private_listener_is_part_of_the_spec_and_optional():
    spec = dataclasses.replace(SPEC, private_listener=9)
    assert WorkerSpec.from_json(spec.to_json()).private_listener == 9
    older = json.loads(SPEC.to_json())
    del older["private_listener"]  # an arbiter from before it
    assert WorkerSpec.from_json(json.dumps(older)).private_listener is None


def test_fields_from_a_newer_arbiter_are_kept_aside():
    data = json.loads(SPEC.to_json())
    data["rolling"] = {"surge": 1}
    spec = WorkerSpec.from_json(json.dumps(data))
    assert spec.extra == {"rolling": {"surge": 1}}
    spec.check_protocol()


def test_another_protocol_version_is_a_clear_refusal():
    data = json.loads(SPEC.to_json())
    data["protocol"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolMismatch) as refused:
        WorkerSpec.from_json(json.dumps(data)).check_protocol()
    message = str(refused.value)
    assert f"speaks beamdeploy protocol {PROTOCOL_VERSION + 1}" in message
    assert f"here speaks {PROTOCOL_VERSION}" in message


def test_events_are_their_wire_names():
    assert json.dumps({"event": Event.READY}) == '{"event": "ready"}'
    assert Event("admin") is Event.ADMIN


def test_request_builders():
    assert upgrade_request("/r", follow=True) == {"op": "upgrade", "release": "/r", "follow": True}
    assert upgrade_request("/u", follow=False, remove_after=True)["remove_after"] is True
    assert rollback_request(follow=False) == {"op": "rollback", "follow": False}
    assert rollback_request("1.4.0", follow=True)["to"] == "1.4.0"


def test_state_dir_is_resolved_one_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BEAMDEPLOY_STATE_DIR", raising=False)
    assert state_dir_path() == str(tmp_path.resolve() / ".beamdeploy")
    monkeypatch.setenv("BEAMDEPLOY_STATE_DIR", "elsewhere")
    assert state_dir_path() == str(tmp_path.resolve() / "elsewhere")
    assert state_dir_path("~/x").endswith("/x") and "~" not in state_dir_path("~/x")
