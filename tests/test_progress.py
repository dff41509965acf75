"""Progress: a bar on an interactive terminal for work worth one; elsewhere (logs, CI, inner work) periodic log lines
on ``tda_clean.progress`` for long work and nothing for short work."""
import io
import logging

import numpy as np
import pytest

from tda_clean.progress import LogProgress, log_to_stderr, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    """A clock the test moves: ``clock.now`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress_bar(10, "work"), LogProgress)
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    with progress_bar(10, "work") as bar:
        assert not isinstance(bar, LogProgress) and not bar.disable
        bar.update(10)
    assert "work" in tty.getvalue()
    assert isinstance(progress_bar(10, "work", worth_showing=False), LogProgress)  # inner work: log lines only


def test_log_progress_lines_every_interval_and_a_done_line(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="tda_clean.progress"):
        with LogProgress(10, "train (adam)", "epochs", interval_s=15, clock=clock) as bar:
            for step in range(10):
                clock.now += 4.0  # 4 s a step: a line at 16 s, 32 s (steps 4 and 8)
                bar.set_postfix(val_loss=f"{1 / (step + 1):.2f}")
                bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["train (adam): 4/10 epochs (40%), 16 s, ~24 s left [val_loss=0.25]",
                     "train (adam): 8/10 epochs (80%), 32 s, ~8 s left [val_loss=0.12]",
                     "train (adam): done, 10 epochs in 40 s"]


def test_short_work_logs_nothing(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="tda_clean.progress"):
        for _ in LogProgress(5, "cleanlab folds", "folds", iterable=range(5), interval_s=15, clock=clock):
            clock.now += 1.0
    assert caplog.records == []


def test_iteration_counts_items_and_a_loop_left_early_still_says_done(caplog):
    clock = _Clock()
    bar = LogProgress(3, "x", iterable=iter("abc"), interval_s=1e9, clock=clock)
    assert list(bar) == ["a", "b", "c"] and bar.n == 3
    with caplog.at_level(logging.INFO, logger="tda_clean.progress"):
        for epoch in LogProgress(100, "train (adam)", "epochs", iterable=range(100), interval_s=10, clock=clock):
            clock.now += 6.0
            if epoch == 4:  # early stopping
                break
    assert [r.getMessage() for r in caplog.records][-1] == "train (adam): done, 4 epochs in 30 s"


def test_training_logs_progress_off_a_terminal(monkeypatch, caplog):
    """``fit`` off a terminal: a due interval gives lines on ``tda_clean.progress`` naming the optimiser."""
    import torch

    from tda_clean.config import TrainConfig
    from tda_clean.models.trainer import fit

    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr("tda_clean.progress.LOG_INTERVAL_S", 0.0)  # every epoch is due
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    config = TrainConfig(optimizer="adam", epochs=3, lr=1e-2, batch_size=32, patience=10)
    with caplog.at_level(logging.INFO, logger="tda_clean.progress"):
        fit(torch.nn.Linear(3, 2), X, y, config, seed=0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train (adam): 1/3 epochs") and lines[-1].startswith("train (adam): done, 3 epochs")


def test_log_to_stderr_while_open_only(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    logger = logging.getLogger("tda_clean")
    before = list(logger.handlers), logger.propagate, logger.level
    with log_to_stderr(), log_to_stderr():  # nested: one handler
        assert len([h for h in logger.handlers if getattr(h, "_tda_clean", False)]) == 1
        assert not logger.propagate  # not printed twice through a root handler
        logging.getLogger("tda_clean.progress").info("train (lbfgs): 5/50 rounds")
    assert (list(logger.handlers), logger.propagate, logger.level) == before
    logging.getLogger("tda_clean.progress").info("after")
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().rstrip().endswith("| INFO    | tda_clean.progress - train (lbfgs): 5/50 rounds")


@pytest.mark.parametrize("method", ["finetune"])
def test_unlearning_says_when_it_starts_and_ends(caplog, method):
    import torch

    from tda_clean.actions.unlearn import unlearn
    from tda_clean.config import TrainConfig, unlearn_spec

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    mask = np.zeros(40, bool)
    mask[:5] = True
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="tda_clean"):
        unlearn(unlearn_spec(method=method, epochs=1), torch.nn.Linear(3, 2), X, y, mask,
                TrainConfig(), seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "tda_clean.actions.unlearn"]
    assert lines[0] == f"unlearn ({method}): forgetting 5 rows, keeping 35" and lines[-1].startswith(
        f"unlearn ({method}): done in")
