"""One registry shape for datasets, architectures, explainers and metrics.

Each entry is a named object plus one typed, validated pydantic config (defaults, ranges, help
text). The same config class drives the CLI flags, the Streamlit forms, the JSON stored next to
results and the model cards, so adding a method is one registered object and its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class Config(BaseModel):
    """Base for every method config: unknown fields are errors, values are validated on assignment, and
    NaN or infinity is never a valid number (else ``eps=nan`` fails a range check with a misleading message,
    or passes one it should not)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class NoConfig(Config):
    """For entries that take no options."""


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the valid names (a ValueError too,
    so validators and callers that expect bad values catch it)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


class ConfigError(ValueError):
    """A config that failed validation; the message names each offending field."""


def format_validation_error(err: ValidationError, what: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return " ".join(f"invalid {what}: {'; '.join(parts)}".split())  # one line, whatever the messages hold


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    config: type[Config]
    summary: str
    tags: frozenset[str] = field(default_factory=frozenset)
    # what the registry's users need besides the object, in one place (e.g. an explanation attack's summary
    # columns, labels and directions; a comparison metric's label); each registry documents its own type
    meta: Any = None

    def make_config(self, values: dict[str, Any] | Config | None = None) -> Config:
        """Validate ``values`` (a dict, a config of this entry, or None for defaults)."""
        if isinstance(values, self.config):
            return values
        if isinstance(values, Config):
            values = values.model_dump()
        try:
            return self.config(**(values or {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"config for {self.name!r}")) from None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "tags": sorted(self.tags),
            "config": self.config.model_json_schema(),
            "defaults": config_defaults(self.config),
        }


def config_defaults(config: type[BaseModel]) -> dict[str, Any]:
    """Defaults of the fields that have one (required fields are left out)."""
    return {
        name: f.get_default(call_default_factory=True)
        for name, f in config.model_fields.items()
        if not f.is_required()
    }


class Registry(Generic[T]):
    """A name → entry mapping with a decorator to register into it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, config: type[Config] = NoConfig, summary: str = "", tags: tuple[str, ...] = (),
        meta: Any = None,
    ) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, config=config, summary=summary, tags=tags, meta=meta)
            return obj

        return decorator

    def add(
        self, name: str, obj: T, *, config: type[Config] = NoConfig, summary: str = "", tags: tuple[str, ...] = (),
        meta: Any = None,
    ) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        doc = summary or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
        self._entries[name] = Entry(name, obj, config, doc, frozenset(tags), meta)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a toy entry clean up with it)."""
        self.get(name)  # the same message for an unknown name
        del self._entries[name]

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def names(self, tag: str | None = None) -> list[str]:
        return [e.name for e in self._entries.values() if tag is None or tag in e.tags]

    def describe(self) -> list[dict[str, Any]]:
        return [e.describe() for e in self]


def field_bounds(field) -> dict:
    """A pydantic field's numeric bounds as ``min_value`` / ``max_value`` (the forms use the config's ranges)."""
    import annotated_types as at

    out = {}
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            out["min_value"] = m.ge if isinstance(m, at.Ge) else m.gt
        if isinstance(m, (at.Le, at.Lt)):
            out["max_value"] = m.le if isinstance(m, at.Le) else m.lt
    return out
