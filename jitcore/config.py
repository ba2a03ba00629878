"""The app YAML: pydantic models, ``{$env: NAME}`` / ``{$file: path}`` resolution, and readable load errors."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from jitcore.errors import ConfigError

DATA_TYPES = ("Stext", "Ltext", "Integer", "Numeric", "Money", "Boolean", "JitDict", "JitList")
ACCESS_MODIFIERS = ("public", "protected", "private")


def _refuse_duplicates(names: list[str], what: str) -> None:
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{what} declared twice: {', '.join(duplicated)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ArgModel(_Strict):
    """One declared argument of a function."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    title: str = ""
    dataType: Literal["Stext", "Ltext", "Integer", "Numeric", "Money", "Boolean", "JitDict", "JitList"]
    required: bool = False


class FunctionModel(_Strict):
    """One entry of an element's ``functionList``."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    title: str = ""
    description: str = ""
    args: list[ArgModel] = []
    returnType: str | None = None
    #: reachable over HTTP without the app's API key (notification callbacks, the cashier's status)
    public: bool = False

    @field_validator("args")
    @classmethod
    def _unique_args(cls, args: list[ArgModel]) -> list[ArgModel]:
        _refuse_duplicates([a.name for a in args], "argument")
        return args


class ElementModel(_Strict):
    """An element definition: an ``e.yaml`` file, or an entry under ``elements:`` in the app YAML."""

    type: str | None = None
    title: str = ""
    description: str = ""
    accessModifier: Literal["public", "protected", "private"] | None = None
    class_: str | None = Field(default=None, alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    functionList: list[FunctionModel] | None = None
    config: dict[str, Any] = {}
    #: how a chooser page presents the element (the payment cashier: ``title``, ``icon``, ``color``, ``order``);
    #: free-form here, read and checked by the page that shows it
    cashier: dict[str, Any] | None = None

    @field_validator("functionList")
    @classmethod
    def _unique_functions(cls, functions: list[FunctionModel] | None) -> list[FunctionModel] | None:
        _refuse_duplicates([f.name for f in functions or []], "function")
        return functions


class EventDeliveryModel(_Strict):
    """``jobs.events``: the retry policy of published events (the built-in job kind ``jit.event``)."""

    #: deliveries tried per hook implementation before its job ends dead
    maxAttempts: int = Field(default=10, ge=1)
    #: delay after failure n: min(maxBackoffSeconds, backoffSeconds * 2**(n-1)), times a jitter of 0.5..1.5
    backoffSeconds: float = Field(default=5.0, ge=0)
    maxBackoffSeconds: float = Field(default=3600.0, ge=0)
    #: a delivery whose process died is taken again after this many seconds
    leaseSeconds: float = Field(default=300.0, gt=0)
    #: a delivery still running after this many seconds (a hook that hangs) is given up and tried again later;
    #: null: never
    timeoutSeconds: float | None = Field(default=900.0, gt=0)


class JobsModel(_Strict):
    """``jobs:``: the app's durable job queue (docs/JOBS.md)."""

    #: ``jit serve`` runs a job runner in each worker process; false leaves the jobs to ``jit worker``
    runner: bool = True
    #: how often an idle runner looks for due jobs (it also wakes early when this process enqueues)
    pollSeconds: float = Field(default=1.0, gt=0)
    #: finished (done) jobs are purged after this many days; dead jobs are kept until retried or deleted
    keepDoneDays: float = Field(default=7.0, ge=0)
    events: EventDeliveryModel = Field(default_factory=EventDeliveryModel)


class AppModel(_Strict):
    """The app YAML."""

    appId: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    title: str = ""
    #: public URL of the app (no trailing slash); provider callbacks are built from it
    baseUrl: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    #: SQLAlchemy URL; default an embedded SQLite file ``{appId}.db`` beside the YAML
    database: str | None = None
    #: app plugins: importable module names (the YAML's folder is importable)
    plugins: list[str] = []
    #: app-local element folders, relative to the YAML
    elementDirs: list[str] = []
    #: API keys accepted as ``Authorization: Bearer KEY`` (give them with $env / $file). Only serving the function
    #: API needs them: a reference that cannot be resolved at load is kept in ``unresolvedApiKeys`` instead of
    #: stopping the load, and the HTTP face refuses to start (see :meth:`require_api_keys`)
    apiKeys: list[str] = []
    #: free-form settings for plugins, keyed by plugin name
    settings: dict[str, Any] = {}
    #: the job queue: runner in ``jit serve``, polling, retention, event delivery policy
    jobs: JobsModel = Field(default_factory=JobsModel)
    elements: dict[str, ElementModel] = {}
    #: why each ``apiKeys`` entry that could not be resolved was left out ("apiKeys[0]: environment variable ...")
    _unresolvedApiKeys: list[str] = PrivateAttr(default_factory=list)

    @property
    def unresolvedApiKeys(self) -> list[str]:
        """The ``apiKeys`` references left unresolved at load, each as its error message."""
        return list(self._unresolvedApiKeys)

    def require_api_keys(self) -> None:
        """Raise :class:`ConfigError` naming every ``apiKeys`` reference that could not be resolved: serving the
        function API needs all of them (a caller holding the missing key would be refused)."""
        if self._unresolvedApiKeys:
            raise ConfigError("serving the function API needs every API key: " + "; ".join(self._unresolvedApiKeys))

    @field_validator("elements")
    @classmethod
    def _valid_names(cls, elements: dict[str, ElementModel]) -> dict[str, ElementModel]:
        for name in elements:
            if not FULLNAME_RE.match(name):
                raise ValueError(f"{name!r} is not a dotted fullName like 'pays.services.PaySvc'")
        return elements

    @field_validator("apiKeys")
    @classmethod
    def _strong_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("an API key must have at least 16 characters")
        return keys

    @field_validator("baseUrl")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url


ModelT = TypeVar("ModelT", bound=BaseModel)

FULLNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def resolve_references(node: Any, base_dir: Path, path: str = "") -> Any:
    """Replace every ``{$env: NAME}`` and ``{$file: relative/path}`` in a parsed YAML tree by its value.

    A missing variable or file is a :class:`ConfigError` naming it and the key it was for. File contents lose their
    trailing whitespace (a key file's final newline is not part of the key)."""
    if isinstance(node, dict):
        if len(node) == 1 and next(iter(node)) in ("$env", "$file"):
            kind, ref = next(iter(node.items()))
            where = path or "(top)"
            if not isinstance(ref, str) or not ref:
                raise ConfigError(f"{where}: {kind} needs a non-empty string")
            if kind == "$env":
                if ref not in os.environ:
                    raise ConfigError(f"{where}: environment variable {ref} is not set")
                return os.environ[ref]
            file = (base_dir / ref).resolve()
            try:
                return file.read_text(encoding="utf-8").rstrip()
            except FileNotFoundError:
                raise ConfigError(f"{where}: file {ref} not found (looked at {file})") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: file {ref} cannot be read: {type(exc).__name__}") from None
        return {k: resolve_references(v, base_dir, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_references(v, base_dir, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """Turn a pydantic error into lines of ``key.path: problem (hint)``. Input values are never echoed: they may be
    secrets."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            field_name = str(err["loc"][-1])
            known = _known_fields(model, err["loc"][:-1])
            close = difflib.get_close_matches(field_name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{loc}: unknown key ({hint})")
        else:
            message = err["msg"]
            hint = ""
            if err["type"] == "literal_error":
                hint = ""  # the message already lists the allowed values
            elif err["type"] == "string_pattern_mismatch":
                message = "has the wrong form"
                hint = f" (expected to match {err.get('ctx', {}).get('pattern')})"
            lines.append(f"{loc}: {message}{hint}")
    return f"{source}: invalid configuration\n  " + "\n  ".join(lines)


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (best effort, for hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(str(part))
            if field_info is None:
                # a dict key (e.g. an element name): the value model is the dict's value type
                continue
            current = _inner_model(field_info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _inner_model(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning syntax errors into a ConfigError with the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def _load_model(path: Path, model: type[ModelT], not_a_mapping: str,
                prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ModelT:
    """Read a YAML file, resolve ``$env``/``$file`` relative to its folder (``prepare`` may resolve some keys its
    own way first), and validate it as ``model``."""
    data = read_yaml(path)
    if model is ElementModel and data is None:
        data = {}  # an empty e.yaml is a valid (empty) definition
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {not_a_mapping}")
    if prepare is not None:
        data = prepare(data)
    data = resolve_references(data, path.parent)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, str(path))) from None


def load_app_model(path: Path) -> AppModel:
    """Read, resolve and validate an app YAML. An ``apiKeys`` entry whose ``$env`` variable or ``$file`` is missing
    does not stop the load (``jit elements``, ``jit call`` and library use do not need it): it is left out and
    recorded, and only serving refuses it (:meth:`AppModel.require_api_keys`)."""
    unresolved: list[str] = []

    def lenient_api_keys(data: dict[str, Any]) -> dict[str, Any]:
        keys = data.get("apiKeys")
        if not isinstance(keys, list):
            return data
        resolved = []
        for i, entry in enumerate(keys):
            try:
                resolved.append(resolve_references(entry, path.parent, f"apiKeys[{i}]"))
            except ConfigError as exc:
                unresolved.append(exc.message)
        return {**data, "apiKeys": resolved}

    model = _load_model(path, AppModel, "the app YAML must be a mapping with at least 'appId'", lenient_api_keys)
    model._unresolvedApiKeys = unresolved
    return model


def load_element_model(path: Path) -> ElementModel:
    """Read and validate an element's ``e.yaml`` (``$env``/``$file`` resolved relative to its folder)."""
    return _load_model(path, ElementModel, "an element definition must be a mapping")
