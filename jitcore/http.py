"""The HTTP face of an app: an ASGI application (Starlette) built from a loaded App.

- ``POST /api/{appId}/{element/path}/{function}``: every declared function, JSON body of its arguments in, JSON
  result out, checked exactly as Python calls are. Needs ``Authorization: Bearer <API key>`` unless the function is
  declared ``public``. The key is checked before the path is looked up: without a valid key, any path but a public
  function's answers the same 401/403, whether or not it names an element or a function.
- ``GET /openapi.json``: an OpenAPI 3.1 document generated from the ``functionList`` declarations (without a valid
  API key: the public functions only).
- ``GET /healthz``: checks the database.
- every route plugins return from ``jit_routes``, mounted first (so a plugin can replace a built-in path).

uvicorn's access log (``jit serve``) never shows the value of a secret query parameter such as ``token=``
(:func:`redact_access_log`).

Mount it in another project with ``build_asgi_app(jitcore.load_app("app.yaml"))``. Its lifespan runs the app's job
runner in the serving process and closes the app at shutdown (docs/JOBS.md).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, AsyncIterator
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitcore.datatypes import JSON_SCHEMAS
from jitcore.errors import AuthError, ElementNotFound, FunctionNotFound, JitError

if TYPE_CHECKING:
    from jitcore.app import App

log = logging.getLogger("jitcore.http")

#: the largest JSON body the function API accepts
API_BODY_LIMIT = 1024 * 1024
#: query parameters whose values are secrets (compared without case, after percent-decoding the name): their values
#: never reach the access log
SECRET_QUERY_PARAMETERS = frozenset({"token", "access_token", "api_key", "apikey", "key", "secret", "password"})
REDACTED = "[redacted]"


class ApiError(JitError):
    """A malformed API request."""

    code = "BAD_REQUEST"
    http_status = 400


class Forbidden(AuthError):
    """An API key was given but is not one of the app's."""

    code = "FORBIDDEN"
    http_status = 403


def to_jsonable(value: Any) -> Any:
    """Python results as JSON values: Decimal as its exact string (money keeps its two places), datetimes as ISO
    8601."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def redact_url(text: str) -> str:
    """``text`` (a path with its query string, or a request line) with the value of every
    :data:`SECRET_QUERY_PARAMETERS` parameter replaced by ``[redacted]``."""
    path, mark, query = text.partition("?")
    if not mark:
        return text
    query, space, rest = query.partition(" ")  # a request line: "GET /path?query HTTP/1.1"
    parts = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and unquote_plus(name).strip().lower() in SECRET_QUERY_PARAMETERS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}{space}{rest}"


class RedactSecrets(logging.Filter):
    """A logging filter that masks secret query parameters (:func:`redact_url`) in a record's arguments, e.g.
    ``GET /pays/cashier/{orderId}?token=...`` in uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(redact_url(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = redact_url(record.msg)
        return True


def redact_access_log(logger_name: str = "uvicorn.access") -> None:
    """Install :class:`RedactSecrets` on uvicorn's access logger (once per process): whatever handlers and format a
    logging configuration gives it, no line it writes carries a secret query parameter's value. A logger's filters
    survive ``logging.config.dictConfig`` (uvicorn configures its loggers that way when it starts)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` as JSON (UTF-8). Text that is not valid Unicode (a lone surrogate a client sent as ``"\\udfff"``
    and that an error message or a result echoes) is written as a JSON escape instead of failing the response."""
    try:
        return JSONResponse(content, status_code=status_code)
    except UnicodeEncodeError:
        body = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return Response(body, status_code=status_code, media_type="application/json")


def error_response(error: JitError) -> Response:
    """A JitError as ``{"error": {"code", "message"}}`` with its HTTP status."""
    return json_response({"error": error.to_dict()}, status_code=error.http_status)


def check_api_key(app: "App", request: Request) -> None:
    """Require one of the app's API keys as a Bearer token (401 without one, 403 with a wrong one)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("this function needs the app's API key: Authorization: Bearer <key>")
    token = token.strip().encode()
    matched = False
    for key in app.model.apiKeys:
        matched |= hmac.compare_digest(key.encode(), token)
    if not matched:
        raise Forbidden("the API key is not valid for this app")


def has_api_key(app: "App", request: Request) -> bool:
    """Whether the request carries one of the app's API keys."""
    try:
        check_api_key(app, request)
    except AuthError:
        return False
    return True


def public_function(app: "App", app_id: str, path: str) -> bool:
    """Whether ``/api/{app_id}/{path}`` names a function declared ``public`` (callable without the API key)."""
    if app_id != app.appId:
        return False
    element_path, _, function = path.strip("/").rpartition("/")
    if not element_path or not function:
        return False
    try:
        spec = app.getDefine(element_path.replace("/", ".")).function(function)
    except Exception:  # unknown, private or broken: an anonymous caller is told nothing about it either way
        return False
    return spec is not None and spec.public


class BodyTooLarge(ApiError):
    """A request body over the endpoint's limit."""

    code = "BODY_TOO_LARGE"
    http_status = 413


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes: checked on Content-Length first and again while
    streaming (a chunked body has none), so an oversized body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"body over {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int = API_BODY_LIMIT) -> dict[str, Any]:
    """The JSON object in the request body (numbers with a fraction read as Decimal, never float)."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError("the body is not valid JSON (or nested too deeply)") from None
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object of the function's arguments")
    return data


def function_endpoint(app: "App") -> Any:
    """The endpoint of ``POST /api/{appId}/{path}``."""

    async def endpoint(request: Request) -> Response:
        try:
            try:
                check_api_key(app, request)
            except AuthError:
                # without a valid key only a public function is reachable; any other path gets the same 401/403,
                # so an anonymous caller learns nothing about the app's elements
                if not await run_in_threadpool(public_function, app, request.path_params["appId"],
                                               request.path_params["path"]):
                    raise
            if request.path_params["appId"] != app.appId:
                raise ElementNotFound(f"no app {request.path_params['appId']} here")
            path = request.path_params["path"].strip("/")
            element_path, _, function = path.rpartition("/")
            if not element_path or not function:
                raise FunctionNotFound("the path must be /api/{appId}/{element/path}/{function}")
            fullName = element_path.replace("/", ".")
            define = await run_in_threadpool(app.getDefine, fullName)
            spec = define.function(function)
            if spec is None:
                raise FunctionNotFound(f"{fullName} declares no function {function}",
                                       details={"fullName": fullName, "function": function})
            arguments = await read_json_body(request)
            proxy = await run_in_threadpool(app.getElement, fullName)
            result = await run_in_threadpool(lambda: proxy._functions[function](**arguments))
        except JitError as exc:
            log.info("POST %s rejected: %s", request.url.path, exc.code)
            return error_response(exc)
        except Exception:
            log.exception("%s failed", request.url.path)
            return JSONResponse({"error": {"code": "INTERNAL_ERROR", "message": "internal error, see the server log"}},
                                status_code=500)
        if isinstance(result, Response):
            return result
        return json_response(to_jsonable(result))

    return endpoint


def openapi_document(app: "App", *, public_only: bool = False) -> dict[str, Any]:
    """An OpenAPI 3.1 document of every declared function of every visible element (``public_only``: of the
    functions declared public, what a caller without the API key may see)."""
    paths: dict[str, Any] = {}
    for fullName in app.elementNames():
        try:
            define = app.getDefine(fullName)
        except JitError:
            continue
        if define.accessModifier == "private" and define.layer != "app":
            continue
        for spec in define.functionList:
            if public_only and not spec.public:
                continue
            properties = {}
            for arg in spec.args:
                schema = dict(JSON_SCHEMAS[arg.dataType])
                schema["x-jit-dataType"] = arg.dataType
                if arg.title:
                    schema["description"] = arg.title
                properties[arg.name] = schema
            operation: dict[str, Any] = {
                "operationId": f"{fullName}.{spec.name}",
                "summary": spec.title or spec.name,
                "tags": [fullName],
                "requestBody": {"required": bool(spec.args), "content": {"application/json": {"schema": {
                    "type": "object", "properties": properties, "additionalProperties": False,
                    "required": [a.name for a in spec.args if a.required]}}}},
                "responses": {
                    "200": {"description": f"the result ({spec.returnType or 'any'})"},
                    "400": {"description": "bad arguments", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}},
                    "404": {"description": "unknown element, function or record"},
                    "409": {"description": "state conflict"},
                    "502": {"description": "a provider failed"},
                },
            }
            if spec.description:
                operation["description"] = spec.description
            if spec.public:
                operation["security"] = []
            else:
                operation["responses"]["401"] = {"description": "API key missing"}
                operation["responses"]["403"] = {"description": "API key not valid"}
            paths[f"/api/{app.appId}/{fullName.replace('.', '/')}/{spec.name}"] = {"post": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": app.title, "version": "1", "description": f"Declared functions of app {app.appId}"},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
        "security": [{"apiKey": []}],
    }


def build_asgi_app(app: "App", *, debug: bool = False) -> Starlette:
    """The ASGI application of ``app``: plugin routes first, then the function API, ``/openapi.json`` and
    ``/healthz``. Its lifespan starts the app's job runner (``app.jobs.start()``, unless the YAML says
    ``jobs: {runner: false}``) and calls ``app.close()`` at shutdown; a server run with ``lifespan="off"`` does
    neither. An ``apiKeys`` reference left unresolved at load stops it (:class:`ConfigError`)."""
    app.model.require_api_keys()
    redact_access_log()  # cashier links carry their token in the query string: never in the access log
    routes: list[Any] = []
    for contributed in app.hook.jit_routes(app=app):
        routes.extend(contributed or [])

    async def openapi(request: Request) -> JSONResponse:
        public_only = not has_api_key(app, request)
        return JSONResponse(await run_in_threadpool(lambda: openapi_document(app, public_only=public_only)))

    async def healthz(_: Request) -> JSONResponse:
        def probe() -> None:
            from sqlalchemy import text

            with app.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(probe)
        except Exception as exc:
            log.error("health check failed: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "app": app.appId})

    routes += [
        Route("/api/{appId}/{path:path}", function_endpoint(app), methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # every serving process runs a job runner (unless jobs.runner is false); shutting down stops it gracefully
        # (a running job may finish) and releases the app
        if app.model.jobs.runner:
            app.jobs.start()
        try:
            yield
        finally:
            await run_in_threadpool(app.close)

    asgi = Starlette(debug=debug, routes=routes, lifespan=lifespan)
    asgi.state.jit_app = app
    return asgi
