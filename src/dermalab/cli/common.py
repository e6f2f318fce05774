"""What every command group shares: the config arguments, the help format, the export parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermalab.core.errors import DermalabError


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The recipe arguments (``-c``, ``--data``, ``--set``, ``--split-file``) of a command."""
    p.add_argument("--config", "-c", help="YAML recipe (see configs/)")
    p.add_argument("--data", help="dataset: folder, HAM10000 CSV/folder, .npz or hmnist CSV")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=1")
    p.add_argument("--split-file", help="external split: CSV of sample_id (or image_id) and "
                   "split (train/val/test); same as --set data.split_file=FILE")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the ``--data``/``--format``/``--split-file`` shortcuts, as overrides."""
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.source={args.data}")
    if getattr(args, "format", None):
        overrides.append(f"data.format={args.format}")
    if getattr(args, "split_file", None):
        overrides.append(f"data.split_file={args.split_file}")
    return overrides


def load_cfg(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dermalab.core.config import load_config

    cfg = load_config(args.config, config_overrides(args))
    src = cfg.data.source
    from_file = (args.config and not getattr(args, "data", None)
                 and not getattr(args, "source", None)  # data inspect's positional SOURCE
                 and not any(o.startswith("data.source=") for o in args.overrides))
    from dermalab.data.storage import is_dataset_word

    if from_file and src and "://" not in src and not Path(src).exists() \
            and not is_dataset_word(src):
        raise DermalabError(f"dataset not found: {src} (data.source of {args.config}, resolved "
                            "from the config file's folder); pass --data PATH to use another")
    return cfg


class HelpFormat(argparse.HelpFormatter):
    """Adds each option's default to its help where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, [])
                and action.default is not argparse.SUPPRESS and "default" not in text):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Every command's parser uses :class:`HelpFormat`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormat)
        super().__init__(*args, **kwargs)


def add_export_parser(sub: Any, what: str, run_help: str,
                       func: Callable[[argparse.Namespace], int]) -> Any:
    """``export RUN_DIR [--format onnx] [--out DIR]`` (classifier and segmenter alike)."""
    exp = sub.add_parser("export", help=f"export {what} (ONNX + model.json)")
    exp.add_argument("run_dir", help=run_help)
    exp.add_argument("--format", default="onnx", help="export format (default onnx)")
    exp.add_argument("--out", help="output folder (default RUN_DIR/export)")
    exp.set_defaults(func=func)
    return exp
