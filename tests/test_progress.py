"""Progress bars appear on an interactive terminal only, and only for work worth a bar."""
import io

from tda_clean.progress import progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(10, "work").disable
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    with progress_bar(10, "work") as bar:
        assert not bar.disable
        bar.update(10)
    assert "work" in tty.getvalue()
    assert progress_bar(10, "work", worth_showing=False).disable
