"""How values become rows and rows become values again.

Arguments, results, messages and events are stored as JSON. Each function gets a `FunctionCodec` built once
from its annotations: values are dumped and validated back through pydantic `TypeAdapter`s, so a
`BaseModel`, dataclass, datetime or `list[Model]` returns as the same type in another process, and loading a
row never executes code. Pickle is used only when a function (or the runtime) asks for `serializer="pickle"`.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import pickle
import sys
import traceback as traceback_module
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic_core
from pydantic import TypeAdapter

from .errors import SerializationError, WorkflowError

SerializerName = Literal["json", "pickle"]
SERIALIZERS: tuple[str, ...] = ("json", "pickle")

_ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)


def check_serializer(name: str) -> SerializerName:
    if name not in SERIALIZERS:
        raise SerializationError(f"unknown serializer {name!r}; expected one of {', '.join(SERIALIZERS)}")
    return typing.cast(SerializerName, name)


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _ANY_ADAPTER
    try:
        return TypeAdapter(annotation)
    except Exception:  # an annotation pydantic cannot build a schema for: store it as plain JSON
        return _ANY_ADAPTER


def dump_value(value: Any, adapter: TypeAdapter[Any] | None, serializer: str, what: str) -> str:
    """Serialize one value, naming `what` it is in the error."""
    if serializer == "pickle":
        try:
            return base64.b64encode(pickle.dumps(value)).decode("ascii")
        except Exception as exc:
            raise SerializationError(f"{what} cannot be pickled: {exc}") from exc
    try:
        if adapter is None or adapter is _ANY_ADAPTER:
            return pydantic_core.to_json(value).decode()
        return adapter.dump_json(value).decode()
    except Exception as exc:
        raise SerializationError(
            f"{what} cannot be stored as JSON ({type(value).__name__}): {exc}. "
            "Annotate it with a pydantic-compatible type, or pass serializer='pickle'."
        ) from exc


def load_value(text: str | None, adapter: TypeAdapter[Any] | None, serializer: str, what: str) -> Any:
    if text is None:
        return None
    if serializer == "pickle":
        return pickle.loads(base64.b64decode(text))
    try:
        if adapter is None or adapter is _ANY_ADAPTER:
            return json.loads(text)
        return adapter.validate_json(text)
    except Exception as exc:
        raise SerializationError(f"{what}: the stored value no longer fits its annotation: {exc}") from exc


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        # Unresolvable forward references: fall back to untyped JSON rather than refusing the function.
        return {}


class FunctionCodec:
    """Dumps and loads one function's arguments and result, typed by its annotations."""

    def __init__(self, fn: Callable[..., Any], serializer: str = "json") -> None:
        self.qualname = getattr(fn, "__qualname__", repr(fn))
        self.serializer = check_serializer(serializer)
        self.signature = inspect.signature(fn)
        hints = _type_hints(fn)
        self._params: list[tuple[str, inspect._ParameterKind, TypeAdapter[Any]]] = []
        for name, param in self.signature.parameters.items():
            ann = hints.get(name, inspect.Parameter.empty)
            if param.kind is inspect.Parameter.VAR_POSITIONAL and ann is not inspect.Parameter.empty:
                ann = tuple[ann, ...]  # type: ignore[valid-type]
            elif param.kind is inspect.Parameter.VAR_KEYWORD and ann is not inspect.Parameter.empty:
                ann = dict[str, ann]  # type: ignore[valid-type]
            self._params.append((name, param.kind, _adapter(ann)))
        self._by_name = {name: adapter for name, _, adapter in self._params}
        self.result_adapter = _adapter(hints.get("return", inspect.Parameter.empty))

    def dump_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.qualname}(): {exc}") from None
        if self.serializer == "pickle":
            return dump_value((args, kwargs), None, "pickle", f"arguments of {self.qualname}")
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            adapter = self._by_name[name]
            try:
                out[name] = adapter.dump_python(value, mode="json")
            except Exception as exc:
                raise SerializationError(
                    f"argument {name!r} of {self.qualname} cannot be stored as JSON "
                    f"({type(value).__name__}): {exc}. Annotate it with a pydantic-compatible type, "
                    "or pass serializer='pickle'."
                ) from exc
        return json.dumps(out, separators=(",", ":"))

    def load_args(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.serializer == "pickle":
            p_args, p_kwargs = load_value(text, None, "pickle", "arguments")
            return tuple(p_args), dict(p_kwargs)
        raw = json.loads(text)
        if isinstance(raw, dict) and POSITIONAL_KEY in raw:
            raw = self._bind_positional(raw)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, kind, adapter in self._params:
            if name not in raw:
                continue
            try:
                value = adapter.validate_python(raw[name])
            except Exception as exc:
                raise SerializationError(
                    f"stored argument {name!r} of {self.qualname} no longer fits its annotation: {exc}"
                ) from exc
            if kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                args.append(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = value
            else:
                kwargs.update(value)
        return tuple(args), kwargs

    def _bind_positional(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Arguments stored by a process without the code (a Client): bind them to the signature now."""
        try:
            bound = self.signature.bind(*raw.get(POSITIONAL_KEY, []), **raw.get(KEYWORD_KEY, {}))
        except TypeError as exc:
            raise SerializationError(f"stored arguments do not fit {self.qualname}(): {exc}") from None
        return dict(bound.arguments)

    def fingerprint(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """`args_hash` of the call bound to the signature: f(1, b=2) and f(1, 2) fingerprint alike."""
        if not args and not kwargs:
            return None
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return args_hash(args, kwargs)
        return args_hash(tuple(bound.arguments.values()), {})

    def dump_result(self, value: Any) -> str:
        return dump_value(value, self.result_adapter, self.serializer, f"the result of {self.qualname}")

    def load_result(self, text: str | None) -> Any:
        return load_value(text, self.result_adapter, self.serializer, f"the result of {self.qualname}")


POSITIONAL_KEY = "$args"
KEYWORD_KEY = "$kwargs"


def dump_untyped_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Arguments as a process without the workflow's code stores them (`Client.start`, `Client.enqueue`).

    They are validated against the function's annotations when a worker that has the code loads them.
    """
    try:
        return json.dumps(
            {
                POSITIONAL_KEY: json.loads(pydantic_core.to_json(list(args))),
                KEYWORD_KEY: json.loads(pydantic_core.to_json(kwargs)),
            },
            separators=(",", ":"),
        )
    except Exception as exc:
        raise SerializationError(f"arguments cannot be stored as JSON: {exc}") from exc


def _hash_fallback(value: Any) -> str:
    return type(value).__qualname__


def args_hash(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """A short fingerprint of a step's arguments, compared on replay. None when there are none.

    Values JSON cannot hold (clients, connections) count by their type name only.
    """
    if not args and not kwargs:
        return None
    try:
        data = pydantic_core.to_json([args, kwargs] if kwargs else args, fallback=_hash_fallback)
    except Exception:
        data = repr([type(a).__qualname__ for a in args]).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# -- exceptions -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredError:
    type: str
    module: str
    message: str
    traceback: str
    args: list[Any] | None
    attrs: dict[str, Any] | None = None

    @property
    def summary(self) -> str:
        return f"{self.type}: {self.message}"


def dump_error(exc: BaseException) -> str:
    try:
        args: list[Any] | None = json.loads(pydantic_core.to_json(list(exc.args)))
    except Exception:
        args = None
    attrs: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("_"):
            continue
        try:
            attrs[name] = json.loads(pydantic_core.to_json(value))
        except Exception:
            continue  # not JSON: left out
    return json.dumps(
        {
            "type": type(exc).__qualname__,
            "module": type(exc).__module__,
            "message": str(exc),
            "traceback": "".join(traceback_module.format_exception(exc)),
            "args": args,
            "attrs": attrs,
        },
        separators=(",", ":"),
    )


def parse_error(text: str) -> StoredError:
    raw = json.loads(text)
    return StoredError(
        type=raw.get("type", "Exception"),
        module=raw.get("module", ""),
        message=raw.get("message", ""),
        traceback=raw.get("traceback", ""),
        args=raw.get("args"),
        attrs=raw.get("attrs"),
    )


def load_error(text: str) -> BaseException:
    """Rebuild a stored exception as its original type when that is safe, else as `WorkflowError`.

    Safe means: the defining module is already imported (nothing is imported on behalf of stored data)
    and the class can be built from its stored JSON arguments.
    """
    stored = parse_error(text)
    module = sys.modules.get(stored.module)
    cls: Any = module
    for part in stored.type.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    if isinstance(cls, type) and issubclass(cls, BaseException) and stored.args is not None:
        try:
            exc = cls(*stored.args)
        except Exception:
            # A constructor with another signature: make the instance without calling it (no user code runs).
            exc = cls.__new__(cls, *stored.args)
            exc.args = tuple(stored.args)
        for name, value in (stored.attrs or {}).items():
            try:
                setattr(exc, name, value)  # attributes the constructor set from other arguments
            except Exception:
                pass
        exc.args = tuple(stored.args)  # the message as it was, whatever the constructor made of its args
        exc.__notes__ = [f"(re-raised by perdure; original traceback:)\n{stored.traceback}"]
        return exc
    return WorkflowError(stored.type, stored.message, stored.traceback, module=stored.module)
