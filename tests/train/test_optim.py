"""Learning-rate schedules, branch by branch, against their formulas; the fused optimisers
against the unfused ones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from dermalab.core.config import OptimConfig, SchedConfig
from dermalab.train.optim import EpochScheduler, build_optimizer, lr_factor


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


class _Net(nn.Sequential):
    """A frozen layer, a trainable body and a head, as build_optimizer expects of a model."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        self[0].requires_grad_(False)  # no gradient: skipped by both kernels

    def get_classifier(self) -> nn.Module:
        return self[2]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimisers_make_the_unfused_update(name: str) -> None:
    def run(fused: bool) -> tuple[torch.optim.Optimizer, nn.Module]:
        net = _Net()
        opt = build_optimizer(OptimConfig(name=name, lr=0.05, weight_decay=0.01,
                                          backbone_lr_mult=0.5, fused=fused), net)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            loss = net(torch.randn(16, 6, generator=gen)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return opt, net

    (fused_opt, fused), (plain_opt, plain) = run(True), run(False)
    assert fused_opt.defaults["fused"] is True and not plain_opt.defaults["fused"]
    for (k, a), b in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    start = _Net()
    assert torch.equal(fused[0].weight, start[0].weight)  # frozen: untouched
    assert not torch.equal(fused[2].weight, start[2].weight)
