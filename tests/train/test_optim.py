"""Learning-rate schedules, branch by branch, against their formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from dermalab.core.config import SchedConfig
from dermalab.train.optim import EpochScheduler, lr_factor


def test_step_decays_at_half_and_three_quarters() -> None:
    cfg = SchedConfig(name="step", gamma=0.1)
    got = [lr_factor(cfg, e, 8, 1.0) for e in range(8)]
    assert got == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_runs_from_one_to_the_floor() -> None:
    cfg = SchedConfig(name="cosine", min_lr=1e-3)
    epochs, base = 10, 1e-2
    got = [lr_factor(cfg, e, epochs, base) for e in range(epochs)]
    floor = 1e-3 / 1e-2
    want = [floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * e / epochs))
            for e in range(epochs)]
    assert got == pytest.approx(want)
    assert got[0] == pytest.approx(1.0) and all(a > b for a, b in itertools.pairwise(got))
    # The floor is min_lr itself, whatever the base LR.
    assert lr_factor(cfg, epochs, epochs, base) * base == pytest.approx(1e-3)


def test_warmup_ramps_linearly_then_hands_over_to_cosine() -> None:
    cfg = SchedConfig(name="cosine", warmup_epochs=3, min_lr=0.0)
    got = [lr_factor(cfg, e, 10, 1.0) for e in range(10)]
    assert got[:3] == pytest.approx([0.25, 0.5, 0.75])
    # Cosine restarts at the top after the warm-up and spans the 7 remaining epochs.
    assert got[3] == pytest.approx(1.0)
    assert got[3:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 7)) for t in range(7)])


def test_warmup_applies_to_step_and_none_too() -> None:
    for name in ("step", "none"):
        cfg = SchedConfig(name=name, warmup_epochs=1)
        assert lr_factor(cfg, 0, 10, 1.0) == pytest.approx(0.5)
        assert lr_factor(cfg, 1, 10, 1.0) == pytest.approx(1.0)


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(2))], "lr": lr},
                            {"params": [nn.Parameter(torch.zeros(2))], "lr": lr / 10}], lr=lr)


def test_plateau_cuts_every_group_after_patience_and_survives_a_restore() -> None:
    cfg = SchedConfig(name="plateau", gamma=0.5, patience=1, min_lr=0.0)
    opt = _optimizer()
    sched = EpochScheduler(cfg, opt, epochs=10, monitor_mode="max")
    lrs = []
    for epoch, value in enumerate([0.5, 0.6, 0.6, 0.6, 0.6]):
        sched.start_epoch(epoch)
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.end_epoch(value)
    # Best value at epoch 2 (0.6); with patience 1 the LR halves once two epochs in a row
    # have not improved on it, i.e. from epoch 5 on.
    assert [r[0] for r in lrs] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05])
    assert [r[1] for r in lrs] == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005])
    # A restored scheduler (resume) continues with the reduced LR.
    opt2 = _optimizer()
    again = EpochScheduler(cfg, opt2, epochs=10, monitor_mode="max")
    again.load_state_dict(sched.state_dict())
    again.start_epoch(5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_plateau_in_min_mode_reacts_to_a_rising_loss() -> None:
    opt = _optimizer()
    sched = EpochScheduler(SchedConfig(name="plateau", gamma=0.1, patience=0, min_lr=0.0),
                           opt, epochs=5, monitor_mode="min")
    sched.start_epoch(0)
    sched.end_epoch(1.0)
    sched.start_epoch(1)
    sched.end_epoch(2.0)  # worse loss: cut at once (patience 0)
    sched.start_epoch(2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
