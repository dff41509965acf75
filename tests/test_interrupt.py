"""SIGINT/SIGTERM become Interrupted in the main thread, even when the first one lands in a finalizer."""
from __future__ import annotations

import gc
import signal
import time

import pytest

from tda_clean.interrupt import Interrupted, stop_on_signals


class _Finalized:
    def __del__(self) -> None:
        raise Interrupted(signal.SIGTERM)  # as if the signal had arrived while garbage collection ran this


def test_interrupted_dropped_in_a_finalizer_is_raised_again(capsys):
    started = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        with stop_on_signals():
            _Finalized()  # __del__ runs here; Python drops its exception
            gc.collect()
            while time.monotonic() - started < 10:  # the work that goes on; the re-sent signal stops it
                time.sleep(0.01)
    assert caught.value.exit_code == 143
    assert time.monotonic() - started < 10
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.fixture
def sigint_as_in_a_terminal():
    """SIGINT at Python's default for the test: a process started in the background without job control (``cmd &``
    in a script, as some CI launchers do) inherits it IGNORED, and an ignored signal is meant to stay ignored."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.mark.usefixtures("sigint_as_in_a_terminal")
def test_signal_raises_interrupted_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as caught:
        with stop_on_signals():
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
    assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before


class _OtherHandlersSignal(BaseException):
    """Like Prefect's TerminationSignal: raised by its own SIGTERM handler, carrying ``.signal``."""

    signal = signal.SIGTERM


class _FinalizedOther:
    def __del__(self) -> None:
        raise _OtherHandlersSignal()


def test_another_handlers_signal_dropped_in_a_finalizer_is_sent_again():
    started = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        with stop_on_signals():
            _FinalizedOther()
            gc.collect()
            while time.monotonic() - started < 10:
                time.sleep(0.01)
    assert caught.value.exit_code == 143


def test_an_inherited_ignored_sigint_stays_ignored():
    """``nohup`` / background launch: SIGINT ignored on entry stays ignored inside the block and after it."""
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # nothing happens
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)
