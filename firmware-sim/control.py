"""The simulator's control API (``pulse sim run --control HOST:PORT``): inject and clear faults in a
running fleet, and see each device's state, without restarting it.

| request | what it does |
| --- | --- |
| ``GET /devices`` | every device: profile, reporting interval, connected, active faults |
| ``POST /devices/{id}/faults`` ``{"kind": "spike", "factor": 5, "for_s": 60}`` | inject a fault (201) |
| ``DELETE /devices/{id}/faults`` | clear every fault of the device (204) |
| ``DELETE /devices/{id}/faults/{kind}`` | clear one fault (204) |

Errors use the API codes of the cloud: ``api.not_found`` for an unknown device, ``api.invalid``
for a fault that cannot be read. It listens on loopback by default and has no login: it is a test
and demo tool, never expose it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pulse.firmware_sim.device import Device, Fault, FaultKind
from pulse.firmware_sim.runner import Fleet
from pulse.protocol.errors import Code

_PARAMS = {"metric": str, "factor": float, "threshold": float, "offset_s": float, "count": int, "for_s": float}


def _error(status: int, code: Code, message: str) -> JSONResponse:
    return JSONResponse({"code": str(code), "message": message}, status_code=status)


def fault_from_json(doc: object) -> Fault:
    """A fault from ``{"kind": ..., <parameters>}``; ValueError names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("the body is a JSON object such as {\"kind\": \"spike\", \"factor\": 5}")
    try:
        fault = Fault(FaultKind(doc.get("kind")))
    except ValueError:
        raise ValueError(f"kind is one of {', '.join(k.value for k in FaultKind)}") from None
    for key, value in doc.items():
        if key == "kind":
            continue
        kind = _PARAMS.get(key)
        if kind is None:
            raise ValueError(f"unknown fault parameter {key!r}; parameters are {', '.join(_PARAMS)}")
        if isinstance(value, bool) or not isinstance(value, str if kind is str else (int, float)):
            raise ValueError(f"{key} is a {'string' if kind is str else 'number'}")
        if key == "for_s":
            fault.until_s = float(value)  # made absolute by Fleet.inject
        else:
            setattr(fault, key, kind(value))
    return fault


def _device_json(fleet: Fleet, dev: Device) -> dict[str, Any]:
    faults = []
    for f in dev.faults.values():
        d = {k: v for k, v in dataclasses.asdict(f).items() if v is not None}
        d["kind"] = f.kind.value
        if f.until_s is not None:
            d["remaining_s"] = round(max(0.0, f.until_s - fleet.sim_now()), 1)
            del d["until_s"]
        faults.append(d)
    return {
        "device_id": dev.device_id,
        "profile": dev.sim.profile.name,
        "interval_s": dev.interval_s,
        "connected": dev.device_id in fleet.stats.connected,
        "sent": dev.sent,
        "faults": faults,
    }


def control_app(fleet: Fleet) -> Starlette:
    async def devices(request: Request) -> Response:
        return JSONResponse([_device_json(fleet, d) for d in fleet.devices.values()])

    async def inject(request: Request) -> Response:
        device_id = request.path_params["device"]
        if device_id not in fleet.devices:
            return _error(404, Code.API_NOT_FOUND, f"no simulated device {device_id}")
        try:
            fault = fault_from_json(await request.json())
        except ValueError as exc:
            return _error(422, Code.API_INVALID, str(exc))
        fleet.inject(device_id, fault)
        return JSONResponse(_device_json(fleet, fleet.devices[device_id]), status_code=201)

    async def clear(request: Request) -> Response:
        device_id = request.path_params["device"]
        if device_id not in fleet.devices:
            return _error(404, Code.API_NOT_FOUND, f"no simulated device {device_id}")
        kind = request.path_params.get("kind")
        if kind is None:
            fleet.clear(device_id)
        else:
            try:
                fleet.clear(device_id, FaultKind(kind))
            except ValueError:
                return _error(404, Code.API_NOT_FOUND, f"no fault kind {kind}")
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/devices", devices, methods=["GET"]),
            Route("/devices/{device}/faults", inject, methods=["POST"]),
            Route("/devices/{device}/faults", clear, methods=["DELETE"]),
            Route("/devices/{device}/faults/{kind}", clear, methods=["DELETE"]),
        ]
    )
