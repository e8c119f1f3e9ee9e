"""The JSON config files users pass to `bert_pretraining` and `bert_cls`, read against a documented schema.

Keys are the paper's (its `pretraining_config.json` / `cls_config.json`, Hugging Face Trainer names
such as `per_device_train_batch_size`, `num_train_epochs`, `model_dir`, accepted as aliases) plus the
suite's own short names (`batch_size`, `epochs`, `pretrained_model`, ...). Every key is documented in
`ovt_explain/configs/*.json` (each example config carries a `"//"` comment per key, which is ignored).
An unknown, missing or mistyped key stops with `file:line: key 'name' ...`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Callable, Sequence

from common.cli import UserError
from common.io_utils import read_json

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    type: Any          # int, float, bool, str, "paths" (str or list of str), "str_or_list", dict
    default: Any
    help: str
    aliases: tuple[str, ...] = ()


def _line_of(text: str, key: str) -> int:
    offset = text.find(json.dumps(key))
    return text.count("\n", 0, offset) + 1 if offset >= 0 else 1


def _check_type(value, expected, where: str, key: str):
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected == "paths":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return value
        raise UserError(f"{where}: key '{key}' must be a path or a non-empty list of paths, got {value!r}")
    if expected == "str_or_list":
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(i, str) for i in value)):
            return value
        raise UserError(f"{where}: key '{key}' must be a string or a list of strings, got {value!r}")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: key '{key}' must be an integer, got {value!r}")
    if expected is not int and expected is not Any and not isinstance(value, expected):
        kind = {float: "a number", bool: "true or false", str: "a string", dict: "an object"}.get(
            expected, expected.__name__)
        raise UserError(f"{where}: key '{key}' must be {kind}, got {json.dumps(value)}")
    if expected is float and isinstance(value, bool):
        raise UserError(f"{where}: key '{key}' must be a number, got {value!r}")
    return value


def load_config(path: str, keys: Sequence[Key], ignored: dict[str, str] | None = None) -> dict:
    """Reads `path` (a JSON object) into {canonical key: value}, defaults filled in.

    `ignored`: original keys accepted for compatibility that have no effect here (name -> why).
    Keys starting with "//" are comments.
    """
    values = read_json(path, UserError, expect=dict)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()  # for the line number of each key in errors
    by_name = {}
    for key in keys:
        for name in (key.name,) + key.aliases:
            by_name[name] = key
    ignored = ignored or {}
    result: dict = {}
    source: dict = {}
    for name, value in values.items():
        if name.startswith("//"):
            continue
        where = f"{path}:{_line_of(text, name)}"
        if name in ignored:
            continue
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name) + list(ignored), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{where}: unknown key '{name}'{hint}; the keys are documented in "
                            f"ovt_explain/configs/")
        key = by_name[name]
        if key.name in source:
            raise UserError(f"{where}: key '{name}' repeats '{source[key.name]}' (the same setting)")
        if value is None and key.default is None:
            result[key.name] = None
        else:
            result[key.name] = _check_type(value, key.type, where, name)
        source[key.name] = name
    for key in keys:
        if key.name not in result:
            if key.default is REQUIRED:
                raise UserError(f"{path}: missing required key '{key.name}' ({key.help})")
            result[key.name] = key.default
    return result


def require_one_of(config: dict, path: str, *names: str) -> str:
    given = [name for name in names if config.get(name) is not None]
    if len(given) != 1:
        raise UserError(f"{path}: give exactly one of the keys {', '.join(repr(n) for n in names)} "
                        f"(got {', '.join(given) or 'none'})")
    return given[0]


def require_flags(values, *names: str) -> None:
    """One error line for the first of the script's required flags that is not given."""
    for name in names:
        if not getattr(values, name):
            raise UserError(f"--{name} is required")


def documented_example(keys: Sequence[Key], values: dict) -> dict:
    """An example config: each key with a "//key" comment before it (used to write configs/*.json)."""
    example: dict = {}
    for key in keys:
        if key.name in values:
            example[f"//{key.name}"] = key.help + (f" (aliases: {', '.join(key.aliases)})" if key.aliases else "")
            example[key.name] = values[key.name]
    return example


def config_script_main(module: str, config_name: str, keys: Sequence[Key], ignored: dict[str, str],
                       run) -> Callable[[list[str]], None]:
    """`main(argv)` of a script whose one argument is a config file, plus common's strategy flags
    (defined now): `run(config, strategy, config_path=...)` does the work."""
    from absl import flags

    from common.distribute import define_strategy_flags

    define_strategy_flags()

    def main(argv):
        from common.distribute import strategy_from_flags

        if len(argv) != 2:
            raise UserError(f"usage: python -m ovt_explain.{module} {config_name} "
                            f"[--strategy=... --mixed_precision=...]")
        config = load_config(argv[1], keys, ignored)
        run(config, strategy_from_flags(flags.FLAGS), config_path=argv[1])

    return main
