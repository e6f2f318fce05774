"""``dermalab train``, ``tune`` and ``compare``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dermalab.cli.common import add_config_args, config_overrides, load_cfg
from dermalab.core.errors import DermalabError


def cmd_train(args: argparse.Namespace) -> int:
    """``dermalab train``."""
    from dermalab.core.runs import RunPaths
    from dermalab.pipeline import next_steps, resume_run, train_run

    if args.resume:
        if args.config or args.overrides or args.data:
            raise DermalabError("--resume takes the run's saved config; do not pass "
                                "--config/--set/--data with it")
        resume_run(args.resume, progress=not args.no_progress, redo_final=args.redo_final)
        print(next_steps(RunPaths(Path(args.resume))))
        return 0
    cfg = load_cfg(args)
    out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = RunPaths(Path(out))
    # An unfinished ensemble folder is fine: members of the same config are reused (checked).
    if paths.last.exists() or paths.is_finished or (paths.members.is_dir()
                                                    and cfg.model.members == 1):
        raise DermalabError(f"{out} already holds a run; use --resume {out} or another --out")
    train_run(cfg, out, progress=not args.no_progress)
    print(next_steps(RunPaths(Path(out))))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """``dermalab tune``."""
    from dermalab.experiments.tune import TuneOptions, tune

    res = tune(TuneOptions(config=args.config, search=args.search, trials=args.trials,
                           out=args.out, sets=config_overrides(args), storage=args.storage,
                           study=args.study, pruner=args.pruner, seed=args.seed,
                           heartbeat=args.heartbeat, progress=not args.no_progress))
    print(f"study {res['study']}: {res['trials']} trials {res['states']}; this worker ran "
          f"{res['ran_here']}")
    if "best_trial" in res:
        print(f"best: trial {res['best_trial']}, validation value {res['best_value']:.4f}, "
              f"{json.dumps(res['best_params'])}\nready to train: dermalab train -c "
              f"{Path(args.out) / 'best_config.yaml'}")
    if "importance_warning" in res:
        print(f"warning: {res['importance_warning']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``dermalab compare``."""
    from dermalab.experiments.compare import compare, parse_backbones

    compare(args.config, parse_backbones(args.backbones), args.out, config_overrides(args),
            progress=not args.no_progress)
    print((Path(args.out) / "comparison.md").read_text())
    return 0


def add_training_parsers(sub: Any) -> None:
    """The parsers of dermalab train, tune and compare."""
    train = sub.add_parser("train", help="fine-tune a backbone and evaluate it")
    add_config_args(train)
    train.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--redo-final", action="store_true", help="with --resume on a finished "
                       "run: redo its final evaluation, calibration and report")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    tn = sub.add_parser("tune", help="Bayesian hyperparameter search (Optuna TPE, pruning)")
    add_config_args(tn)
    tn.add_argument("--search", required=True, help="search-space YAML (see configs/search_*)")
    tn.add_argument("--trials", type=int, required=True,
                    help="trials the study should hold, counted over all its workers")
    tn.add_argument("--out", required=True, help="study folder (trials, results, plots)")
    tn.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. "
                    "postgresql+psycopg://user@host/db (default sqlite in --out)")
    tn.add_argument("--study", help="study name (default: the config's name)")
    tn.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                    help="stop hopeless trials early")
    tn.add_argument("--seed", type=int, help="sampler seed (leave unset with several workers)")
    tn.add_argument("--heartbeat", type=int, default=30, help="seconds between worker "
                    "heartbeats; a trial silent for twice this is retried")
    tn.add_argument("--no-progress", action="store_true", help="no progress bars")
    tn.set_defaults(func=cmd_tune)

    cp = sub.add_parser("compare", help="train several backbones with one recipe and split")
    add_config_args(cp)
    cp.add_argument("--backbones", required=True,
                    help="comma-separated; 'name:scratch' trains from random weights")
    cp.add_argument("--out", required=True, help="comparison folder")
    cp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cp.set_defaults(func=cmd_compare)
