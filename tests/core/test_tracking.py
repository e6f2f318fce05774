"""The MLflow parent-run election used when several tune workers start together."""

from __future__ import annotations

import threading
from pathlib import Path

from dermalab.core.config import load_config
from dermalab.core.tracking import elect_parent_run, store_uri


def _active_parents(uri: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dermalab")
    return [r.info.run_id for r in client.search_runs([exp.experiment_id])]


def test_a_later_candidate_defers_to_the_earlier_one_and_deletes_itself(tmp_path: Path) -> None:
    cfg = load_config(None, []).tracking
    uri = store_uri(cfg, tmp_path)
    first = elect_parent_run(cfg, uri, "tune:s", {}, key="tune:s", settle_s=0)
    # A worker that read "no parent yet" before the first one stored it: it makes a candidate
    # of its own, finds the earlier one, and gives way.
    second = elect_parent_run(cfg, uri, "tune:s", {}, key="tune:s", settle_s=0)
    assert second == first
    assert _active_parents(uri) == [first]
    # Another key (another study, even with a quote in its name) gets its own parent.
    other = elect_parent_run(cfg, uri, "tune:o'k", {}, key="tune:o'k", settle_s=0)
    assert other != first and sorted(_active_parents(uri)) == sorted([first, other])


def test_workers_starting_together_agree_on_one_parent(tmp_path: Path) -> None:
    cfg = load_config(None, []).tracking
    uri = store_uri(cfg, tmp_path)
    # The store and experiment exist before the race, as after the first worker's set-up.
    elect_parent_run(cfg, uri, "warm-up", {}, key="warm-up", settle_s=0)
    barrier = threading.Barrier(4)
    chosen: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            chosen.append(elect_parent_run(cfg, uri, "tune:race", {}, key="tune:race",
                                           settle_s=1.0))
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(chosen) == 4 and len(set(chosen)) == 1
    # The three losers deleted their candidates: the winner and the warm-up run are left.
    assert chosen[0] in _active_parents(uri) and len(_active_parents(uri)) == 2
