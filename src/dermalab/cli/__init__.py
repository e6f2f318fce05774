"""``dermalab`` command line: parses arguments and calls one function per command.

Errors caused by input (bad files, configs, splits) print one line naming the problem and exit
with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from dermalab.cli.common import Parser
from dermalab.cli.datasets import add_data_parsers
from dermalab.cli.evaluation import add_evaluation_parsers
from dermalab.cli.segmentation import add_segment_parsers
from dermalab.cli.serving import add_serving_parsers, serve_models
from dermalab.cli.training import add_training_parsers
from dermalab.core.errors import DermalabError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all commands."""
    parser = argparse.ArgumentParser(
        prog="dermalab",
        description="Train, evaluate, explain and serve skin-disease image classifiers "
                    "(decision support, not a diagnosis).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    add_data_parsers(sub)
    add_training_parsers(sub)
    add_evaluation_parsers(sub)
    add_segment_parsers(sub)
    add_serving_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dermalab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except DermalabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dermalab data list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    _leave_process_group()
    return code


def _leave_process_group() -> None:
    """Destroy the torchrun process group before the interpreter exits.

    A worker that exits with its gloo group alive can abort in the group's destructor
    ("terminate called without an active exception", SIGABRT after a finished run: seen in CI;
    pytorch/pytorch#190489). Only after a command returned: a rank that failed must not wait on
    peers that may still be inside a collective (torchtitan#1342)."""
    dist = sys.modules.get("torch.distributed")  # never import torch for a command that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["build_parser", "main", "serve_models"]
