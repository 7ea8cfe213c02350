"""Loading: the YAML file and ``CLEANUP_WORKER__*`` env overrides merged into one tree, built into
the dataclasses of ``worker.config.tree`` and checked against ``worker.config.rules``.

Phase 1 merges every source into one raw tree with canonical keys, remembering where each key
came from; phase 2 builds the dataclasses (types and per-key rules); phase 3 checks cross-key
and route rules. Every problem is one ``ConfigError`` line: key path, message, source.
"""

from __future__ import annotations

import difflib
import functools
import math
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from worker.config.dsn import dsn_problem, redact_passwords
from worker.config.rules import (
    CROSS_KEY,
    DSN,
    KEY_SOURCES,
    LABEL,
    OPS,
    RULES,
    KeyPath,
    Problem,
    Rule,
    entry_problems,
    get_key,
    override_problems,
)
from worker.config.tree import OPENAI_DEFAULT_BASE_URL, Config, DatabaseConfig, ProvidersConfig
from worker.errors import ConfigError

ENV_CONFIG, ENV_DSN, ENV_PREFIX = "CLEANUP_WORKER_CONFIG", "CLEANUP_WORKER_DSN", "CLEANUP_WORKER__"
_YAML_WORDS = {"None": "null", "True": "true", "False": "false"}
_SECRETISH = ("key", "password", "secret")  # values of such keys are never echoed


class _EnvText(str):
    """An env override's raw text: kept as-is for string keys, parsed as YAML for the rest."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys instead of keeping the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        for i, (key_node, _) in enumerate(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in keys[:i]:
                problem = f"duplicate key '{key_node.value}'"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        return super().construct_mapping(node, deep)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) not in (Union, types.UnionType):
        return tp, False
    return next(a for a in get_args(tp) if a is not type(None)), type(None) in get_args(tp)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and is_dataclass(tp)


def _default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    if get_origin(tp) is Literal:  # case-insensitive, normalised to the declared spelling
        choice = value.lower() if isinstance(value, str) else None
        return choice in get_args(tp), choice
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok and math.isfinite(value), float(value) if ok else None
    return isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), value


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(get_args(tp))
    return {int: "an integer", float: "a number", str: "a string"}.get(tp, "true or false")


def _show(value: Any) -> str:
    if isinstance(value, bool | dict | list) or value is None:
        return _YAML_WORDS.get(repr(value), f"a {type(value).__name__}")
    text = redact_passwords(value if isinstance(value, str) else repr(value))
    text = text if len(text) <= 80 else text[:77] + "..."
    return repr(text) if isinstance(value, str) else text


def _fail(message: str) -> ConfigError:
    return ConfigError("config error: " + message.replace("\r", " ").replace("\n", " "))


class _Loader:
    """Phase 1 merges every source into one raw tree with canonical keys, remembering where
    each key came from; phase 2 builds the dataclasses; phase 3 checks cross-key and route
    rules."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self.sources: dict[KeyPath, str] = {}

    def source(self, path: KeyPath, *related: KeyPath) -> str:
        exact = [self.sources[p] for p in (path, *related) if p in self.sources]
        while path and path not in self.sources:  # else the nearest enclosing key's source
            path = path[:-1]
        return ", ".join(dict.fromkeys(exact)) or self.sources.get(path, "defaults")

    def error(
        self, path: KeyPath, message: str, *related: KeyPath, origin: str = ""
    ) -> ConfigError:
        where = ".".join(path) or "(top level)"
        return _fail(f"{where}: {message} (from {origin or self.source(path, *related)})")

    def merge(
        self, tp: Any, dst: dict[str, Any], src: Any, path: KeyPath, origin: str, fold: bool
    ) -> None:
        if not isinstance(src, dict):
            raise self.error(path, f"expected a mapping, got {_show(src)}", origin=origin)
        for raw_key, value in src.items():
            key, sub_tp = self.child(tp, dst, str(raw_key), path, origin, fold)
            sub = (*path, key)
            self.sources[sub] = origin
            if isinstance(value, _EnvText):
                value = self.env_value(sub_tp, value, sub, origin)
            if _is_dataclass_type(sub_tp) or get_origin(sub_tp) is dict:
                value = {} if value is None else value  # an empty section means "all defaults"
                self.merge(sub_tp, dst.setdefault(key, {}), value, sub, origin, fold)
            else:
                dst[key] = value

    def child(
        self, tp: Any, dst: dict[str, Any], key: str, path: KeyPath, origin: str, fold: bool
    ) -> tuple[str, Any]:
        at = (*path, key)
        if _is_dataclass_type(tp):  # key names are case-insensitive
            hints, at = _hints(tp), (*path, key.lower())
            if key.lower() in hints:
                return key.lower(), hints[key.lower()]
            if key.lower() == "api_key":
                msg = "literal API keys are not accepted; " + KEY_SOURCES
            else:
                close = difflib.get_close_matches(key.lower(), list(hints), n=1, cutoff=0.5)
                msg = "unknown key; " + (
                    f"did you mean '{'.'.join((*path, close[0]))}'?"
                    if close
                    else "valid keys: " + ", ".join(hints)
                )
            raise self.error(at, msg, origin=origin)
        if path == ("providers", "tenants"):  # canonical lower-case UUID
            try:
                return str(uuid.UUID(key)), get_args(tp)[1]
            except ValueError:
                raise self.error(at, "tenant keys must be UUIDs", origin=origin) from None
        if not LABEL.fullmatch(key):
            msg = "a backend label is 1..32 characters [A-Za-z0-9._-], alphanumeric at both ends"
            raise self.error(at, msg, origin=origin)
        if fold:  # env names are upper-case by habit: reuse a known label's spelling
            known = [*dst, *self.tree.get("providers", {}).get("backends", {})]
            key = next((k for k in known if k.lower() == key.lower()), key.lower())
        return key, get_args(tp)[1]

    def env_value(self, tp: Any, text: _EnvText, path: KeyPath, origin: str) -> Any:
        inner, optional = _unwrap_optional(tp)
        if optional and not text:
            return None  # an empty override unsets an optional key
        if inner is str or get_origin(inner) is Literal:
            return str(text)
        try:
            return yaml.safe_load(str(text))
        except yaml.YAMLError:
            raise self.error(path, "the value is not valid YAML", origin=origin) from None

    def read_file(self, path: Path, how: str) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _fail(f"config file {path} not found{how}") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _fail(f"cannot read config file {path}: {reason}{how}") from None
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: safe_load semantics
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
            raise _fail(f"{path}: invalid YAML at {at}: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise _fail(f"{path}: invalid YAML ({type(exc).__name__})") from None
        if data is not None:
            self.merge(Config, self.tree, data, (), str(path), fold=False)

    def read_env(self, environ: Mapping[str, str]) -> None:
        for name in sorted(environ):  # sorted: backends are known before tenants refer to them
            if not name.upper().startswith(ENV_PREFIX):
                continue
            segments = name[len(ENV_PREFIX) :].split("__")
            if not all(segments):
                raise _fail(f"{name}: malformed name; use {ENV_PREFIX}SECTION__KEY")
            nested: Any = _EnvText(environ[name])
            for segment in reversed(segments):
                nested = {segment: nested}
            self.merge(Config, self.tree, nested, (), name, fold=True)

    def build(self, tp: Any, raw: Any, path: KeyPath, base: Any, rule: Rule | None) -> Any:
        inner, optional = _unwrap_optional(tp)
        if _is_dataclass_type(inner):  # missing keys fall back to `base` (the default value)
            kwargs, hints = {}, _hints(inner)
            for f in fields(inner):
                sub = (*path, f.name)
                fallback = getattr(base, f.name) if base is not None else _default_of(f)
                if f.name in raw:
                    own = RULES.get((inner, f.name))
                    kwargs[f.name] = self.build(hints[f.name], raw[f.name], sub, fallback, own)
                elif fallback is MISSING:
                    raise self.error(sub, "required key is missing")
                else:
                    kwargs[f.name] = fallback
            return inner(**kwargs)
        if get_origin(inner) is dict:
            value_tp = get_args(inner)[1]
            return {k: self.build(value_tp, v, (*path, k), None, None) for k, v in raw.items()}
        if raw is None and optional:
            return None
        ok, value = _coerce(inner, raw)
        if ok and (rule is None or rule.ok(value)):
            return rule.norm(value) if rule else value
        expect = rule.expect if rule else _describe(inner)
        secret = any(s in path[-1].lower() for s in _SECRETISH)
        raise self.error(
            path, f"expected {expect}, " + ("value not shown" if secret else f"got {_show(raw)}")
        )

    def check(self, cfg: Config) -> Config:
        cfg = replace(cfg, database=self.database(cfg.database))
        for at, op, other, why in CROSS_KEY:
            mine, theirs = get_key(cfg, at), get_key(cfg, other)
            if not OPS[op][0](mine, theirs):
                message = f"must be {OPS[op][1]} {'.'.join(other)} ({_show(theirs)}), got "
                raise self.error(at, message + _show(mine) + why, other)
        return replace(cfg, providers=self.providers(cfg.providers, cfg.outbox.lease_seconds))

    def providers(self, providers: ProvidersConfig, lease: float) -> ProvidersConfig:
        """Every backend, then every tenant override alone and with what it inherits."""
        backends = dict(providers.backends)
        for label, b in backends.items():
            self.first_problem(("providers", "backends", label), entry_problems(b.kind, b, lease))
            if b.kind == "openai" and b.base_url is None:
                backends[label] = replace(b, base_url=OPENAI_DEFAULT_BASE_URL)
        for tenant, overrides in providers.tenants.items():
            for label, override in overrides.items():
                at = ("providers", "tenants", tenant, label)
                backend = backends.get(label)
                if backend is None:
                    known = ", ".join(backends) or "none"
                    raise self.error(at, f"no backend has this label; configured: {known}")
                self.first_problem(at, entry_problems(backend.kind, override, lease))
                self.first_problem(at, override_problems(label, backend, override))
        return replace(providers, backends=backends)

    def first_problem(self, at: KeyPath, problems: list[Problem]) -> None:
        if problems:
            name, message, related = problems[0]
            other = ("outbox", related) if related == "lease_seconds" else (*at, related)
            raise self.error((*at, name), message, other)

    def database(self, db: DatabaseConfig) -> DatabaseConfig:
        """Read ``dsn_file`` / ``migrate_dsn_file``, then make sure libpq can parse each DSN:
        an unparseable DSN is a configuration error at start, not a retry loop later."""
        for key, file_key in (("dsn", "dsn_file"), ("migrate_dsn", "migrate_dsn_file")):
            path = getattr(db, file_key)
            if path is not None:
                if ("database", key) in self.sources:
                    message = f"conflicts with database.{key}: set only one"
                    raise self.error(("database", file_key), message, ("database", key))
                read: dict[str, Any] = {key: self.dsn_from_file(("database", file_key), path)}
                db = replace(db, **read)
            value = getattr(db, key)
            problem = None if value is None else dsn_problem(value)
            if problem:
                at = ("database", file_key if path is not None else key)
                raise self.error(at, f"not a usable PostgreSQL DSN: {problem}")
        return db

    def dsn_from_file(self, at: KeyPath, path: str) -> str:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.error(at, f"cannot read {path}: {reason}") from None
        if not DSN.ok(text):
            raise self.error(at, f"{path} does not hold {DSN.expect} (content not shown)")
        return text


def load_config(path: Path | None, *, environ: Mapping[str, str], dsn: str | None = None) -> Config:
    """Load and validate the configuration; any problem raises a one-line ``ConfigError``."""
    loader = _Loader()
    if path is not None:
        loader.read_file(Path(path), "")
    elif environ.get(ENV_CONFIG):
        loader.read_file(Path(environ[ENV_CONFIG]), f" (set by {ENV_CONFIG})")
    loader.read_env(environ)
    for value, origin in ((environ.get(ENV_DSN) or None, ENV_DSN), (dsn, "--dsn")):
        if value is not None:
            loader.merge(Config, loader.tree, {"database": {"dsn": value}}, (), origin, False)
    cfg = loader.build(Config, loader.tree, (), Config(), None)
    assert isinstance(cfg, Config)
    return loader.check(cfg)
