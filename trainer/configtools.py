"""Config plumbing shared by every typed config (the training stages and the continual-learning runs):
merging YAML layers and `key=value` overrides into a structured schema, and writing it back out.

Kept apart from the stage schema so that a config with no audio in it does not import the audio stack.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key to change."""


def merge_layers(schema: type, files: list[Path], fixed: dict, overrides: list[str], *, example: str):
    """schema defaults <- YAML files <- fixed values <- `key=value` overrides, as a typed object.

    Unknown keys and values of the wrong type become a ConfigError naming the full key."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. {example}), got: {' '.join(bad)}")
    try:
        merged = OmegaConf.structured(schema)
        for path in files:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        return OmegaConf.to_object(OmegaConf.merge(merged, fixed, OmegaConf.from_dotlist(list(overrides))))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {message}" if key else f"config: {message}") from None


def last_override(overrides: list[str], key: str) -> str | None:
    """The value of the last `key=value` among the overrides (the one that wins the merge), or None if none sets it;
    for what must be known before merging (a preset to layer in, the device a launcher starts processes for)."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return values[-1] if values else None


def to_dict(cfg) -> dict:
    """Any typed config (stage or continual) as plain containers."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
