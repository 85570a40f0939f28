"""One registry shape for datasets, architectures, explainers and metrics.

Each entry is a named object plus one typed, validated pydantic config (defaults, ranges, help
text). The same config class drives the CLI flags, the Streamlit forms, the JSON stored next to
results and the model cards, so adding a method is one registered object and its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ExplrobustError

T = TypeVar("T")
C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base for every method config: unknown fields are errors, values are validated on assignment, and
    NaN or infinity is never a valid number (else ``eps=nan`` fails a range check with a misleading message,
    or passes one it should not)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class NoConfig(Config):
    """For entries that take no options."""


class UnknownNameError(KeyError, ValueError, ExplrobustError):
    """A name that is not in a registry; the message lists the valid names (a ValueError too,
    so validators and callers that expect bad values catch it)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingExtraError(ImportError, ExplrobustError):
    """An optional dependency is not installed; the message says how to install it."""


class ConfigError(ValueError, ExplrobustError):
    """A config that failed validation; the message names each offending field."""


def format_validation_error(err: ValidationError, what: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return " ".join(f"invalid {what}: {'; '.join(parts)}".split())  # one line, whatever the messages hold


def resolve_config(config_class: type[C], config: dict[str, Any] | Config | None = None, *,
                   what: str | None = None, **options: Any) -> C:
    """A validated ``config_class`` from ``config`` with the keyword ``options`` laid over it.

    Args:
        config_class: the :class:`Config` subclass to build.
        config: a dict of its fields, any :class:`Config` (its fields are taken), or None for the defaults.
        what: how the error message names the config (default: the class's name).
        **options: fields that override ``config``'s.

    Returns:
        ``config`` itself when it is already a ``config_class`` and no option is given, else a new, validated one.

    Raises:
        ConfigError: a field is unknown or out of range; the one-line message names each offending field.

    Example:
        >>> from explrobust_core.attacks.classification import PGDConfig
        >>> resolve_config(PGDConfig, {"eps": 0.1, "steps": 20}, eps=0.3).eps
        0.3
    """
    if isinstance(config, config_class) and not options:
        return config
    values = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    try:
        return config_class(**{**values, **options})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, what or config_class.__name__)) from None


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
        """Validate ``values`` (a dict, a config of this entry, or None for defaults); :meth:`resolve` without
        options."""
        return self.resolve(values)

    def resolve(self, config: dict[str, Any] | Config | None = None, **options: Any) -> Config:
        """This entry's validated config: ``config`` with the keyword ``options`` laid over it.

        Args:
            config: a dict of the config's fields, a config (of this entry or any other: its fields are taken),
                or None for the defaults.
            **options: fields that override ``config``'s (``eps=0.3``).

        Returns:
            An instance of ``self.config``; ``config`` itself when it already is one and no option is given.

        Raises:
            ConfigError: a field is unknown to this entry or out of its range (the message names the entry and
                each field).

        Example:
            >>> from explrobust_core.attacks.classification import CLASSIFICATION_ATTACKS
            >>> CLASSIFICATION_ATTACKS.get("pgd").resolve({"eps": 0.1, "steps": 20}, eps=0.3).eps
            0.3
        """
        return resolve_config(self.config, config, what=f"config for {self.name!r}", **options)

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
