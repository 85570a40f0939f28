"""Entry.resolve / resolve_config: the one way a config is merged with keyword overrides and validated."""

import pytest
from pydantic import Field

from explrobust_core.errors import ExplrobustError
from explrobust_core.registry import Config, ConfigError, Registry, resolve_config


class Toy(Config):
    eps: float = Field(0.1, ge=0, le=1)
    steps: int = Field(10, ge=1, le=100)


class Other(Config):
    eps: float = 0.5


def make_registry():
    registry = Registry("toy method")
    registry.add("toy", lambda cfg: cfg, config=Toy)
    return registry


def test_resolve_lays_the_options_over_the_config():
    entry = make_registry().get("toy")
    assert entry.resolve() == Toy()
    assert entry.resolve({"eps": 0.2}) == Toy(eps=0.2, steps=10)
    assert entry.resolve({"eps": 0.2, "steps": 3}, eps=0.7) == Toy(eps=0.7, steps=3)
    given = Toy(eps=0.3)
    assert entry.resolve(given) is given  # already this entry's config: taken as it is
    merged = entry.resolve(given, steps=5)
    assert merged == Toy(eps=0.3, steps=5) and given.steps == 10  # a new config; the given one is untouched
    assert entry.resolve(Other(), steps=2) == Toy(eps=0.5, steps=2)  # another config's fields are taken
    assert entry.make_config({"steps": 4}) == entry.resolve({"steps": 4})


@pytest.mark.parametrize("config, options, field", [({"eps": 2.0}, {}, "eps"), ({}, {"steps": 0}, "steps"),
                                                    ({}, {"eps": float("nan")}, "eps"), ({"colour": 1}, {}, "colour")])
def test_a_bad_value_is_one_config_error_naming_the_entry_and_the_field(config, options, field):
    with pytest.raises(ConfigError) as err:
        make_registry().get("toy").resolve(config, **options)
    message = str(err.value)
    assert message.startswith("invalid config for 'toy': ") and field in message and "\n" not in message
    assert isinstance(err.value, ValueError) and isinstance(err.value, ExplrobustError)


def test_resolve_config_for_a_config_outside_a_registry():
    assert resolve_config(Toy, {"eps": 0.2}, steps=7) == Toy(eps=0.2, steps=7)
    with pytest.raises(ConfigError, match=r"^invalid Toy: steps"):
        resolve_config(Toy, None, steps=1000)
    with pytest.raises(ConfigError, match=r"^invalid the toy settings: eps"):
        resolve_config(Toy, {"eps": -1}, what="the toy settings")
