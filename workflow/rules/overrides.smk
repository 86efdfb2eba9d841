"""``--config`` overrides read as YAML would read them, before the config is validated."""

import re


def typed(value):
    """A ``--config`` value as YAML would read it: Snakemake keeps nested values (``training={epochs: 3}``) as
    strings, which the schema would refuse."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, str):
        if re.fullmatch(r"[-+]?[0-9]+", value):
            return int(value)
        if re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", value):
            return float(value)
        return {"true": True, "false": False, "null": None, "~": None}.get(value.lower(), value)
    return value


def retype_overrides(target, overrides):
    """Retype the leaves of ``target`` that ``overrides`` (the command line's ``--config``) set."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            retype_overrides(target[key], value)
        else:
            target[key] = typed(target[key])


retype_overrides(config, workflow.config_settings.config or {})
