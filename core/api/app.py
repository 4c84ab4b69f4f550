"""The HTTP API's routes, on FastAPI: the same services the pages and the command line call, as the key's owner.

Every route but the documentation (``/docs``, ``/openapi.json``) needs ``Authorization: Bearer KEY`` (``core.keys``):
no valid key answers 401, a key whose scopes do not cover the route 403, and more requests than the setting
``api_rate_per_minute`` allows a key 429 with ``Retry-After``. Bodies are JSON, or multipart/form-data where images
are uploaded; every answer is JSON in the shape ``python -m core ... --json`` prints (both call the same services
and shaping functions). Errors are ``{"error": message, "field": name or null, "status": code}``: 400 a request the
services refuse, 404 a model, index or job that does not exist *or that the key's owner may not see* (the same
answer, so existence stays private), 413 a body over ``max_upload_bytes``, 415 another content type, 422 a field of
the wrong type or out of bounds (a hyperparameter names what is allowed). Anything unexpected is a 500 with an error
id, the traceback going to the server's log only.

Networks and indexes are loaded once per process and shared (``core.loaded``). Handlers that run a network or read
the store are run on the server's thread pool, so one slow prediction never holds up the others. The key check and a
search by vector or item run on the event loop itself when they can be answered from what is loaded and remembered
(``quick=True``; ``core.store.memo`` re-reads after any commit): a hop to a thread and back cost 0.7 ms on this
project's 2-core machine, more than the search. Anything slower (loading an index, embedding, writing a key's last
use) raises ``NotQuick`` there and goes to the thread pool.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from core import keys, settings
from core.errors import NotQuick, UserError, ValidationError
from core.keys import Caller
from core.models import GENERAL
from core.users import NotAllowed, NotFound

log = logging.getLogger("deeptrain.api")

MAX_IMAGES = 64  # images one predict or embed request may carry
MAX_NAME_CHARS = 200  # an image's name, as the answer repeats it
_B64_HINT = 'a base64 string, or {"name": ..., "data": base64}'


# ------------------------------------------------------------------------------------------------ answers and errors


class StudioJSON(JSONResponse):
    """JSON as the command line writes it (``json.dump(..., default=str)``): the same shapes, byte for byte in
    content."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, ensure_ascii=False).encode("utf-8")


class ApiError(Exception):
    """An answer other than 200: status, a message a person can act on, and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


class TooLarge(HTTPException):
    """A body over ``max_upload_bytes``, found while it streams in (a chunked body has no Content-Length)."""


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> StudioJSON:
    return StudioJSON({"error": message, "field": field, "status": status}, status_code=status, headers=headers)


_FIELD_FIRST = re.compile(r"^([A-Za-z_]\w*): ")


def _user_error(exc: UserError) -> StudioJSON:
    if isinstance(exc, NotFound):
        return _error(404, str(exc))
    if isinstance(exc, NotAllowed):
        return _error(403, str(exc))
    if isinstance(exc, ValidationError):  # a hyperparameter's message starts with its name
        m = _FIELD_FIRST.match(str(exc))
        return _error(422, str(exc), f"params.{m.group(1)}" if m else None)
    from core.store.engine import StoreBusy

    if isinstance(exc, StoreBusy):
        return _error(503, str(exc), headers={"Retry-After": "5"})
    return _error(400, str(exc))


def _validation_error(exc: RequestValidationError) -> StudioJSON:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return _error(422, f"{field}: {message}" if field else message, field)


# ------------------------------------------------------------------------------------------------ keys and limits

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer dts_...` (python -m core "
                                                   "keys create --name NAME, or the API keys page)")


class RateLimiter:
    """A token bucket per key: a burst of ``per_minute`` requests, refilled at ``per_minute`` a minute."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, key_id: int, per_minute: int) -> float:
        """0.0 and one request counted when the key may go on; else the seconds until it may."""
        if per_minute <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - then) * per_minute / 60.0)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) * 60.0 / per_minute


def _caller(*scopes: str) -> Callable[..., Awaitable[Caller]]:
    """The dependency every route declares: the key's caller, allowed one of ``scopes`` (none: an unrestricted key
    only), counted against the rate limit."""

    async def dependency(request: Request, creds: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Caller:
        if creds is None:
            raise ApiError(401, "Send an API key: the header Authorization: Bearer KEY (create one with `python -m "
                           "core keys create --name NAME` or on the API keys page)", "Authorization",
                           {"WWW-Authenticate": "Bearer"})
        try:  # here on the event loop: a thread hop costs more (0.7 ms measured) than the key's one indexed read
            caller = keys.authenticate(creds.credentials, quick=True)
        except NotQuick:  # a write is due ("last used", the owner's role): it may wait on the store's lock
            caller = await run_in_threadpool(keys.authenticate, creds.credentials)
        if caller is None:
            raise ApiError(401, "This API key is not valid: unknown or revoked", "Authorization",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        limit = int(settings.get("api_rate_per_minute"))
        wait = request.app.state.limiter.wait_s(caller.key_id, limit)
        if wait > 0:
            raise ApiError(429, f"Rate limit: this key may make {limit} requests a minute (api_rate_per_minute); "
                           f"try again in {wait:.1f} s", None, {"Retry-After": str(max(1, round(wait + 0.5)))})
        if not (any(caller.allows(s) for s in scopes) if scopes else caller.allows(None)):
            need = " or ".join(scopes) if scopes else "a key without scopes"
            raise ApiError(403, f"Key {caller.key_name!r} is limited to {', '.join(caller.scopes)}; this needs {need}",
                           "Authorization")
        return caller

    return dependency


class BodyLimit:
    """ASGI middleware: a body over ``max_upload_bytes`` answers 413, from its Content-Length before it is read, or
    as soon as a streamed body passes the limit."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = int(settings.get("max_upload_bytes"))
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            await _error(413, _too_large(limit), "body")(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(413, _too_large(limit))
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> str:
    from core.text import human_bytes

    return f"The request is larger than one upload may be on this server ({human_bytes(limit)}, max_upload_bytes)"


# ------------------------------------------------------------------------------------------------ reading bodies


async def _read(request: Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The fields and uploaded files of a JSON or multipart/form-data body (files: ``(name, bytes)``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        fields: dict[str, Any] = {}
        files: list[tuple[str, bytes]] = []
        async with request.form(max_files=MAX_IMAGES, max_fields=32) as form:  # its spooled files closed after
            for name, value in form.multi_items():
                if isinstance(value, str):
                    fields[name] = value
                elif name in ("images", "image"):
                    files.append((_image_name(value.filename, len(files)), await value.read()))
                else:
                    raise ApiError(422, f"{name}: unexpected file; upload images as 'images'", name)
        return fields, files
    if ctype in ("application/json", ""):
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The body is not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise ApiError(422, "The JSON body must be an object", "body")
        return body, []
    raise ApiError(415, f"Send application/json or multipart/form-data, not {ctype}", "Content-Type")


def _image_name(name: Any, index: int) -> str:
    text = name if isinstance(name, str) and name.strip() else f"image-{index}"
    return text[:MAX_NAME_CHARS]


def _b64_images(value: Any, field: str) -> list[tuple[str, bytes]]:
    """Images of a JSON body: one or a list of base64 strings (a ``data:`` URL too) or {"name", "data"} objects."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]" if isinstance(value, list) else field
        name, data = f"image-{i}", item
        if isinstance(item, dict):
            name, data = _image_name(item.get("name"), i), item.get("data")
        if not isinstance(data, str):
            raise ApiError(422, f"{where}: expected {_B64_HINT}", where)
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            out.append((name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(422, f"{where}: not valid base64", where) from None
    return out


def _images(fields: dict[str, Any], files: list[tuple[str, bytes]], field: str = "images") -> list[tuple[str, bytes]]:
    images = files + (_b64_images(fields[field], field) if fields.get(field) is not None else [])
    if not images:
        raise ApiError(422, f"{field}: give at least one image (a multipart file '{field}', or {_B64_HINT} in JSON)",
                       field)
    if len(images) > MAX_IMAGES:
        raise ApiError(413, f"{field}: {len(images)} images; one request may carry at most {MAX_IMAGES}", field)
    return images


def _checked(field: str, check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)``, a refusal answering 422 that names ``field``."""
    try:
        return check(value)
    except UserError as exc:
        raise ApiError(422, str(exc), field) from None


def _unknown(fields: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(fields) - allowed)
    if extra:
        raise ApiError(422, f"{extra[0]}: unknown field; fields: {', '.join(sorted(allowed))}", extra[0])


# ------------------------------------------------------------------------------------------------ request models


class JobRequest(BaseModel):
    """A job as ``python -m core train`` or ``index build`` queues it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["train", "index"] = Field("train", description="train a model, or build a visual-search index")
    dataset: str | int = Field(description="dataset name, owner/name or id")
    kind: Literal["classifier", "embedder", "detector"] | None = Field(None, description="train: what to train")
    template: str | None = Field(None, description="train: the template (python -m core templates)")
    params: dict[str, Any] = Field(default_factory=dict, description="train: hyperparameters, checked against the "
                                                                     "template's bounds")
    name: str | None = Field(None, description="the model's or index's name")
    seed: int = 0
    options: dict[str, Any] | None = Field(None, description="train: early_stopping_patience, compile")
    base_model: str | int | None = Field(None, description="train: a trained embedder or 'general' as frozen base")
    model: str | int = Field(GENERAL, description=f"index: {GENERAL!r} or a model's name or id")


def _body_doc(fields: dict[str, Any], files: bool) -> dict:
    """An OpenAPI requestBody for a route that reads JSON or multipart itself."""
    props = {k: v for k, v in fields.items()}
    content = {"application/json": {"schema": {"type": "object", "properties": props}}}
    if files:
        multipart = {k: ({"type": "array", "items": {"type": "string", "format": "binary"}} if k == "images" else
                         {"type": "string", "format": "binary"} if k == "image" else {"type": "string"})
                     for k in props if k != "vector"}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": multipart}}
    return {"requestBody": {"required": True, "content": content}}


_B64_LIST = {"type": "array", "items": {"oneOf": [{"type": "string", "format": "byte"}, {
    "type": "object", "properties": {"name": {"type": "string"}, "data": {"type": "string", "format": "byte"}}}]}}


# ------------------------------------------------------------------------------------------------ the application


def create_app() -> FastAPI:
    """The API application (one per process: it holds the rate limiter; networks and indexes live in core.loaded)."""
    app = FastAPI(
        title="Deep Training Studio API", version="1", default_response_class=StudioJSON,
        description="Predict, embed and search with the studio's models and indexes; list them; queue jobs. Every "
                    "route needs `Authorization: Bearer KEY`; a key acts as its owner. Answers have the shapes "
                    "`python -m core ... --json` prints.")
    app.state.limiter = RateLimiter()
    app.add_middleware(BodyLimit)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> StudioJSON:
        return _error(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(UserError)
    async def _refused(_request: Request, exc: UserError) -> StudioJSON:
        return _user_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> StudioJSON:
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> StudioJSON:
        return _error(exc.status_code, str(exc.detail), "body" if isinstance(exc, TooLarge) else None,
                      dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> StudioJSON:
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s: %s", error_id, type(exc).__name__, exc_info=exc)
        return _error(500, f"Something went wrong on the server (error id {error_id}); the details are in the "
                      "server's log under that id")

    # ---------------------------------------------------------------- models and indexes
    @app.get("/v1/models", summary="The models the key's owner sees (python -m core models --json)")
    def list_models(caller: Caller = Depends(_caller("read"))) -> Any:
        from core.evaluation import service

        return service.list_models(caller.user)

    @app.get("/v1/models/{model:path}", summary="One model by name, owner/name or id")
    def get_model(model: str, caller: Caller = Depends(_caller("read"))) -> Any:
        from core.evaluation import service

        return service.get(caller.user, model)

    @app.get("/v1/indexes", summary="The indexes the key's owner sees (python -m core index list --json)")
    def list_indexes(dataset: str | None = None, caller: Caller = Depends(_caller("read"))) -> Any:
        from core.search import service

        return service.list_indexes(caller.user, dataset)

    @app.get("/v1/indexes/{index:path}", summary="One index's facts (python -m core index show NAME --json)")
    def get_index(index: str, caller: Caller = Depends(_caller("read"))) -> Any:
        from core.search import service

        return service.index_facts(caller.user, index)

    # ---------------------------------------------------------------- predict, embed, search
    @app.post("/v1/models/{model:path}/predict", summary="Predict concepts (or boxes) on one or several images "
              "(python -m core predict MODEL IMAGE... --json)",
              openapi_extra=_body_doc({"images": _B64_LIST, "threshold": {"type": "number", "default": 0.5},
                                       "top_k": {"type": "integer", "default": 5}}, files=True))
    async def predict(model: str, request: Request, caller: Caller = Depends(_caller("predict"))) -> Any:
        from core.evaluation.predict import check_threshold, check_top_k
        from core.evaluation.predict import predict as run

        fields, files = await _read(request)
        _unknown(fields, {"images", "threshold", "top_k"})
        images = _images(fields, files)
        top_k = _checked("top_k", check_top_k, fields.get("top_k", 5))
        threshold = _checked("threshold", check_threshold, fields.get("threshold", 0.5))
        return await run_in_threadpool(run, caller.user, model, images, top_k=top_k, threshold=threshold)

    @app.post("/v1/embed", summary="Embed images with a model or the general embedder (the vectors its indexes hold)",
              openapi_extra=_body_doc({"images": _B64_LIST, "model": {"type": "string", "default": GENERAL}},
                                      files=True))
    async def embed(request: Request, caller: Caller = Depends(_caller("predict", "search"))) -> Any:
        from core.search import service

        fields, files = await _read(request)
        _unknown(fields, {"images", "model"})
        images = _images(fields, files)
        model = fields.get("model", GENERAL)
        if not isinstance(model, (str, int)) or isinstance(model, bool):
            raise ApiError(422, "model: expected 'general' or a model's name or id", "model")
        return await run_in_threadpool(service.embed, caller.user, model, images)

    @app.post("/v1/indexes/{index:path}/search", summary="The most similar images of an index (python -m core search "
              "INDEX ... --json): query by an uploaded image, a stored item id, a concept or a raw vector",
              openapi_extra=_body_doc({
                  "image": {"type": "string", "format": "byte", "description": "base64 (JSON) or a file (multipart)"},
                  "item": {"type": "integer"}, "concept": {"type": "string"},
                  "vector": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string",
                             "format": "byte"}], "description": "JSON only: a list of numbers, or base64 of "
                             "little-endian float32 values (numpy: base64.b64encode(v.astype('<f4').tobytes())), a "
                             "quarter of the bytes and read without parsing 1,280 decimals"},
                  "k": {"type": "integer", "default": 10}, "filter": {"type": "string"}}, files=True))
    async def search(index: str, request: Request, caller: Caller = Depends(_caller("search"))) -> Any:
        from core.search import service

        fields, files = await _read(request)
        _unknown(fields, {"image", "item", "concept", "vector", "k", "filter"})
        if len(files) + (fields.get("image") is not None) > 1 or isinstance(fields.get("image"), list):
            raise ApiError(422, "image: search with one image", "image")
        image = files[0] if files else (_b64_images(fields["image"], "image")[0]
                                        if fields.get("image") is not None else None)
        item = fields.get("item")
        if item is not None:
            item = _checked("item", _whole, item)
        concept, flt = fields.get("concept"), fields.get("filter")
        for name, value in (("concept", concept), ("filter", flt)):
            if value is not None and not isinstance(value, str):
                raise ApiError(422, f"{name}: expected a concept name", name)
        vector = fields.get("vector")
        if isinstance(vector, str):  # base64 float32, or a multipart field's JSON text
            vector = _checked("vector", _vector_text, vector)
        given = [n for n, v in (("image", image), ("item", item), ("concept", concept), ("vector", vector))
                 if v is not None]
        if len(given) != 1:
            raise ApiError(422, "Search with exactly one of: image, item, concept or vector"
                           + (f" (got {', '.join(given)})" if given else ""), given[1] if len(given) > 1 else None)
        k = _checked("k", _k, fields.get("k", 10))

        def run(quick: bool = False) -> StudioJSON:
            opened = service.open_index(caller.user, index, quick=quick)
            checked = None if vector is None else _checked(
                "vector", lambda v: service.check_vector(v, opened.index.dim), vector)
            return StudioJSON(service.result_json(service.search(
                caller.user, index, image=image, item_id=item, concept=concept, vector=checked, k=k,
                concept_filter=flt or None, opened=opened, quick=quick)))

        try:  # a vector or an item on a loaded index: a millisecond's lookup, less than a thread hop costs
            return run(quick=True)
        except NotQuick:  # loading, embedding or a pass over every label: on the thread pool
            return await run_in_threadpool(run)

    # ---------------------------------------------------------------- jobs
    @app.get("/v1/jobs", summary="The key owner's jobs (python -m core jobs --json)")
    def list_jobs(caller: Caller = Depends(_caller("read"))) -> Any:
        from core import jobs

        return jobs.list_jobs(caller.user)

    @app.get("/v1/jobs/{job_id}", summary="One job's state, progress and metrics (python -m core jobs show ID --json)")
    def job_status(job_id: int, caller: Caller = Depends(_caller("read"))) -> Any:
        from core import jobs

        return jobs.status(caller.user, job_id)

    @app.post("/v1/jobs", status_code=202, summary="Queue a training or index job; hyperparameters are checked "
              "against the template's bounds as on the Train page (422 names the parameter and what is allowed). "
              "Needs a key without scopes")
    def submit_job(job: JobRequest, caller: Caller = Depends(_caller())) -> Any:
        from core import jobs

        if job.type == "train":
            missing = [f for f in ("kind", "template") if getattr(job, f) is None]
            if missing:
                raise ApiError(422, f"{missing[0]}: a training job needs it", missing[0])
            config: dict[str, Any] = {"dataset": job.dataset, "kind": job.kind, "template": job.template,
                                      "params": job.params, "name": job.name, "seed": job.seed}
            if job.options:
                config["options"] = job.options
            if job.base_model is not None:
                config["base_model"] = job.base_model
        else:
            config = {"dataset": job.dataset, "model": job.model, "name": job.name}
        return {"job": jobs.submit(caller.user, job.type, config)}

    return app


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise UserError(f"item: expected an item id (a whole number), got {value!r}")
    return int(value)


def _k(value: Any) -> int:
    from core.search.service import MAX_K

    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
            or not 1 <= int(value) <= MAX_K:
        raise UserError(f"k must be a whole number from 1 to {MAX_K}, got {value!r}")
    return int(value)


def _vector_text(text: str) -> Any:
    """A vector given as text: a JSON list of numbers (a multipart field), or base64 of little-endian float32."""
    import numpy as np

    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise UserError("vector: expected a JSON list of numbers") from None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("vector: expected a list of numbers, or base64 of little-endian float32 values") from None
    if len(raw) % 4:
        raise UserError(f"vector: base64 of little-endian float32 values holds a multiple of 4 bytes, got {len(raw)}")
    return np.frombuffer(raw, "<f4")
