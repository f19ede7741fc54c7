"""The one small Registry type: name -> builder function, listing, did-you-mean, argument checks."""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from dlrun.errors import ConfigError


def closest(name: str, choices: list[str]) -> str | None:
    """The closest valid name to a misspelled one, if any is close enough."""
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    return match[0] if match else None


def _did_you_mean(name: str, choices: list[str]) -> str:
    guess = closest(name, choices)
    return f" Did you mean '{guess}'?" if guess else ""


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if annotation is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a plain config value (from YAML or the command line) fits a type hint."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        return not args or all(_matches(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_hints(fn: Callable) -> dict[str, Any]:
    """The builder's type hints; one that names a type imported only for type checkers is not checked (instead of
    failing with NameError: `find_lr(parts: TrainingParts, ...)`)."""
    try:
        return typing.get_type_hints(fn)
    except NameError:
        hints = {}
        for name, annotation in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = typing.get_type_hints(types.SimpleNamespace(__annotations__={name: annotation}),
                                                    globalns=getattr(fn, "__globals__", {}))[name]
            except NameError:
                continue
        return hints


def check_arguments(fn: Callable, kwargs: Mapping[str, Any], prefix: str, extra: Mapping[str, Any] = ()) -> dict:
    """Check config keys against a builder's signature; return the keyword arguments to call it with.

    `extra` holds the values the runner passes itself (data info, parameters); they are
    offered only to builders that declare them.
    """
    sig = inspect.signature(fn)
    hints = _type_hints(fn)
    params = sig.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    user_keys = [k for k in params if k not in dict(extra)]
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in params and not accepts_any:
            raise ConfigError(
                f"Unknown key '{prefix}.{key}' (value {value!r}). Valid keys of {prefix}: "
                f"{', '.join(user_keys) or 'none'}.{_did_you_mean(key, user_keys)}",
                key=f"{prefix}.{key}",
            )
        hint = hints.get(key, inspect.Parameter.empty)
        if key in params and not _matches(value, hint):
            raise ConfigError(
                f"Wrong type for '{prefix}.{key}': got {value!r}, expected {_type_name(hint)}.",
                key=f"{prefix}.{key}",
            )
        if hint is float and isinstance(value, int):
            value = float(value)
        out[key] = value
    for key, value in dict(extra).items():
        if key in params or accepts_any:
            out[key] = value
    missing = [
        k for k, p in params.items()
        if p.default is inspect.Parameter.empty and k not in out
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
    if missing:
        raise ConfigError(f"Missing key(s) {', '.join(f'{prefix}.{m}' for m in missing)}: set them in the config "
                          f"or on the command line, e.g. {prefix}.{missing[0]}=...", key=f"{prefix}.{missing[0]}")
    return out


# The `_target_` names the user gave for this build (see `trusting`); None: any (a builder called directly).
_TRUSTED: ContextVar[frozenset[str] | None] = ContextVar("dlrun_trusted_targets", default=None)


@contextmanager
def trusting(targets: Iterable[str]) -> Iterator[None]:
    """While building: import no `_target_` but these, the ones the user named (a run folder's saved config, read
    as data, may name others: they are refused, with how to allow them)."""
    token = _TRUSTED.set(frozenset(targets))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def refuse_untrusted(target: Any, key: str) -> None:
    """Refuse a `_target_` the user did not name while `trusting` is in force (from a run folder's saved config)."""
    trusted = _TRUSTED.get()
    if not isinstance(target, str) or (trusted is not None and target not in trusted):
        raise ConfigError(
            f"'{key}={target}' names code that you did not give: it comes from a run folder's saved config, which "
            f"dl-run reads as data and never runs. If you trust it, say so: trust_code=[{target}].", key=key)


def import_target(target: str, key: str) -> Callable:
    """Import `package.module.function` named by a `_target_` key (one the user named: see `trusting`)."""
    refuse_untrusted(target, key)
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"Cannot import '{key}={target}': {err}. A _target_ must be 'package.module.function' importable "
            f"from the current directory or the Python path.", key=key
        ) from None
    if not callable(found):
        raise ConfigError(f"'{key}={target}' is {type(found).__name__}, not a function or class: a _target_ names "
                          f"a builder, 'package.module.function'.", key=key)
    return found


class Registry:
    """An explicit table of builders for one kind of component (model, loss, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: file a builder under `name`."""

        def add(fn: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str, key: str | None = None) -> Callable:
        """The builder for `name`, or a ConfigError listing valid names and the closest one."""
        key = key or self.kind
        if name not in self._builders:
            raise ConfigError(
                f"Unknown {self.kind} '{key}={name}'. Valid {self.kind}s: {', '.join(self.names())}."
                f"{_did_you_mean(name, self.names())}",
                key=key,
            )
        return self._builders[name]

    def build(self, cfg: Mapping[str, Any], key: str | None = None, **extra: Any) -> Any:
        """Build from a config mapping: `name` picks a registered builder, `_target_` a user's own.

        Every other key is a flat keyword argument, checked against the builder's signature.
        """
        key = key or self.kind
        cfg = dict(cfg)
        target = cfg.pop("_target_", None)
        name = cfg.pop("name", None)
        if target is not None:
            fn = import_target(target, f"{key}._target_")
        elif name is not None:
            fn = self.get(name, f"{key}")
        else:
            raise ConfigError(f"'{key}' needs a 'name' (one of {', '.join(self.names())}) or a '_target_'.", key=key)
        kwargs = check_arguments(fn, cfg, key, extra)
        return fn(**kwargs)
