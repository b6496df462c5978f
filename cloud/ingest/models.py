"""The answers of the device-facing HTTP ingest routes, for the OpenAPI document. The routes write
these bytes themselves (orjson, the stored twin message, the command messages) on the hot path;
the models describe them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class MessageResult(BaseModel):
    index: int = Field(description="the message's position in the request (0 for a single envelope)")
    status: Literal["accepted", "rejected"]
    code: str | None = Field(default=None, description="rejected: the error code (protocol/errors.py)")
    message: str | None = Field(default=None, description="rejected: why, in a sentence")


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    results: list[MessageResult]


class DeviceTwinState(BaseModel):
    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any] | None = Field(default=None, description="omitted when desired and reported agree")


class DeviceTwin(BaseModel):
    version: int
    timestamp: int = Field(description="when the twin was read (ms)")
    state: DeviceTwinState
    metadata: dict[str, Any]


class DeviceCommand(BaseModel):
    id: str
    name: str
    params: dict[str, Any]
    expires: int = Field(description="deadline (ms)")
