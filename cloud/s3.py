"""An S3-compatible bucket's client and keys, for the stores that may live in one (the telemetry
archive, firmware artifacts). boto3 is imported only where a bucket is configured."""

from __future__ import annotations

from typing import Any

from pulse.cloud.settings import S3Config


def client(config: S3Config) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
    )


def describe(config: S3Config) -> str:
    return f"bucket {config.bucket} at {config.endpoint_url or 'AWS'}"


def object_key(config: S3Config, key: str) -> str:
    """``key`` under the configured prefix (``key`` is checked by the caller)."""
    prefix = config.prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def missing(exc: BaseException) -> bool:
    """A botocore ClientError that says the object is not there."""
    response = getattr(exc, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")
