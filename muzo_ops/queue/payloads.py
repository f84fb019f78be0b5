"""Payload validation per job type (the fields of the reference).

``validate(job_type, payload)`` raises ``PayloadError`` listing every field
that is wrong, by path; values are never quoted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from muzo_ops.queue.jobs import JobType, PayloadError, is_whole

Check = Callable[[Any], str | None]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a URL"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "must be a URL"
    return None if parts.scheme in ("http", "https", "s3") and parts.netloc else "must be an http(s) URL"


def _choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}"
    return check


def _int_range(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        ok = is_whole(value) and value >= low
        if ok and high is not None:
            ok = value <= high
        if ok:
            return None
        return f"must be an integer from {low} to {high}" if high is not None else f"must be an integer > {low - 1}"
    return check


class _Validator:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def field(self, obj: dict[str, Any], path: str, key: str, check: Check, required: bool = True) -> None:
        if key not in obj or obj[key] is None:
            if required:
                self.errors.append(f"{path}{key}: required")
            return
        problem = check(obj[key])
        if problem:
            self.errors.append(f"{path}{key}: {problem}")

    def obj(self, obj: dict[str, Any], path: str, key: str, required: bool = True) -> dict[str, Any] | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.errors.append(f"{path}{key}: required")
            return None
        if not isinstance(value, dict):
            self.errors.append(f"{path}{key}: must be an object")
            return None
        return value


def _generation(v: _Validator, p: dict[str, Any]) -> None:
    v.field(p, "", "projectId", _string)
    v.field(p, "", "prompt", _string)
    v.field(p, "", "negativePrompt", lambda x: None if isinstance(x, str) else "must be a string",
            required=False)
    style = v.obj(p, "", "style")
    if style is not None:
        v.field(style, "style.", "id", _string)
        v.field(style, "style.", "preset", _string, required=False)
    v.field(p, "", "inputImageUrl", _url)
    params = v.obj(p, "", "parameters", required=False)
    if params is None:
        return
    q = "parameters."
    v.field(params, q, "stage", _choice("preview", "final"), required=False)
    v.field(params, q, "quality", _choice("low", "medium", "high", "auto"), required=False)
    v.field(params, q, "size", _choice("1024x1024", "1024x1536", "1536x1024", "auto"), required=False)
    v.field(params, q, "outputFormat", _choice("png", "jpeg", "webp"), required=False)
    v.field(params, q, "background", _choice("auto", "opaque", "transparent"), required=False)
    v.field(params, q, "moderation", _choice("auto", "low"), required=False)
    v.field(params, q, "n", _int_range(1, 4), required=False)
    v.field(params, q, "partialImages", _int_range(0, 3), required=False)
    v.field(params, q, "inputFidelity", _choice("low", "high"), required=False)
    upscale = v.obj(params, q, "upscale", required=False)
    if upscale is not None:
        v.field(upscale, q + "upscale.", "target", _choice("4k", "8k"))
        v.field(upscale, q + "upscale.", "provider", _choice("runpod"))


def _mockup(v: _Validator, p: dict[str, Any]) -> None:
    for key in ("orderId", "outputAssetId", "productVariantId"):
        v.field(p, "", key, _string)
    v.field(p, "", "template", _string, required=False)


def _fulfillment(v: _Validator, p: dict[str, Any]) -> None:
    v.field(p, "", "provider", _choice("printful", "printify", "cloudprinter"))
    order = v.obj(p, "", "order")
    if order is None:
        return
    v.field(order, "order.", "orderId", _string)
    files = order.get("files")
    if not isinstance(files, list) or not files:
        v.errors.append("order.files: must be a non-empty list")
    else:
        for i, item in enumerate(files):
            if not isinstance(item, dict):
                v.errors.append(f"order.files[{i}]: must be an object")
                continue
            v.field(item, f"order.files[{i}].", "url", _url)
            v.field(item, f"order.files[{i}].", "type", _choice("default"))
    shipping = v.obj(order, "order.", "shipping")
    if shipping is not None:
        for key in ("name", "address1", "city", "zip", "country"):
            v.field(shipping, "order.shipping.", key, _string)
    items = order.get("items")
    if not isinstance(items, list) or not items:
        v.errors.append("order.items: must be a non-empty list")
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            v.errors.append(f"order.items[{i}]: must be an object")
            continue
        path = f"order.items[{i}]."
        v.field(item, path, "productId", _string, required=False)
        v.field(item, path, "variantId", lambda x: None if isinstance(x, (str, int)) and x != ""
                else "must be a string or integer")
        v.field(item, path, "quantity", _int_range(1))
        v.field(item, path, "productOptions", lambda x: None if isinstance(x, dict)
                else "must be an object", required=False)


_SCHEMAS: dict[JobType, Callable[[_Validator, dict[str, Any]], None]] = {
    JobType.GENERATION: _generation,
    JobType.MOCKUP: _mockup,
    JobType.FULFILLMENT: _fulfillment,
}


def validate(job_type: JobType, payload: Any) -> None:
    """Raise PayloadError naming every wrong field of ``payload``."""
    if not isinstance(payload, dict):
        raise PayloadError(f"{job_type.value} payload must be an object")
    validator = _Validator()
    _SCHEMAS[job_type](validator, payload)
    if validator.errors:
        raise PayloadError(f"invalid {job_type.value} payload: " + "; ".join(validator.errors))
