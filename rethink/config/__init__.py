"""Config system: detectron2's keys and defaults in fvcore's CfgNode, `_BASE_` inheritance,
`KEY VALUE` overrides, paper schedules, validation, and a frozen result.

    cfg = load_config("configs/scratch_gn_r50.yaml", ["SOLVER.IMS_PER_BATCH", "8"])

Errors (unknown key, wrong type, unsupported value) are :class:`ConfigError` naming the key and the
file (or "command line") it came from.
"""
import difflib
import os
from typing import Dict, Iterable, Optional

import yaml
from fvcore.common.config import CfgNode

from .defaults import get_cfg
from .schedule import describe_schedule, parse_schedule, resolve_schedule, schedule_steps
from .validate import ConfigError, describe_source, validate, validate_before_resolution

__all__ = ["CfgNode", "ConfigError", "describe_schedule", "get_cfg", "load_config", "parse_schedule", "schedule_steps"]


def _leaf_keys(data: dict, node: CfgNode, prefix: str, source: str):
    """Yield the full keys of `data`, checking each exists in `node`."""
    for k, v in data.items():
        full = prefix + k
        if k not in node:
            close = difflib.get_close_matches(k, list(node.keys()), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {full}{hint}")
        if isinstance(node[k], CfgNode):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: config key {full} is a group of keys, got the value {v!r}")
            yield from _leaf_keys(v, node[k], full + ".", source)
        else:
            yield full


def _merge_file(cfg: CfgNode, path: str, origins: Dict[str, str], chain=()) -> None:
    path = os.path.abspath(os.path.expanduser(path))
    if path in chain:
        raise ConfigError(f"{path}: _BASE_ cycle through {' -> '.join(chain)}")
    if not os.path.isfile(path):
        where = f" (the _BASE_ of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base:
        bases = [base] if isinstance(base, str) else list(base)
        for b in bases:
            b = os.path.expanduser(b)
            b = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
            _merge_file(cfg, b, origins, chain + (path,))
    keys = list(_leaf_keys(data, cfg, "", path))
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{path}: {e.args[0] if e.args else e}") from None
    origins.update({k: path for k in keys})


def _merge_overrides(cfg: CfgNode, overrides: Iterable[str], origins: Dict[str, str]) -> None:
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ConfigError(f"command line: overrides come as KEY VALUE pairs, got an odd number: {overrides}")
    for key, value in zip(overrides[0::2], overrides[1::2]):
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                prefix = ".".join(parts[:i])
                options = list(node.keys()) if isinstance(node, CfgNode) else []
                close = difflib.get_close_matches(part, options, n=1)
                hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
                raise ConfigError(f"command line: unknown config key {key}{hint}")
            node = node[part] if i < len(parts) - 1 else node
        if isinstance(node[parts[-1]], CfgNode):
            raise ConfigError(f"command line: config key {key} is a group of keys; set one of its leaves")
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError) as e:
            raise ConfigError(f"command line: bad value {value!r} for {key}: {e.args[0] if e.args else e}") from None
        origins[key] = "command line"


def load_config(path: Optional[str], overrides: Iterable[str] = (), freeze: bool = True,
                origins: Optional[Dict[str, str]] = None, resolution: Optional[Dict[str, object]] = None) -> CfgNode:
    """Defaults <- `path` (with its `_BASE_` chain) <- `overrides`; then schedule resolution and
    validation. Returns a frozen CfgNode unless freeze=False. `origins`, if given, is filled with
    {key: file or "command line"} for every key set explicitly; `resolution`, if given, with what the
    schedule resolution did (for :func:`describe_schedule`)."""
    cfg = get_cfg()
    origins = {} if origins is None else origins
    if path:
        _merge_file(cfg, str(path), origins)
    _merge_overrides(cfg, overrides, origins)
    validate_before_resolution(cfg, origins)
    try:
        done = resolve_schedule(cfg, set(origins))
    except ValueError as e:
        raise ConfigError(f"{describe_source('SOLVER.SCHEDULE', cfg, origins)}: {e}") from None
    validate(cfg, origins)
    if resolution is not None:
        resolution.update(done)
    if freeze:
        cfg.freeze()
    return cfg
