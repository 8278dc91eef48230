"""The documentation site builds with Sphinx, warnings as errors, and documents every public name."""

import subprocess
import sys
from pathlib import Path

import pytest

from lscjax import sparse

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_module_has_an_api_page():
    modules = {"lscjax"} | {f"lscjax.{p.stem}" for p in (ROOT / "src" / "lscjax").glob("*.py")}
    modules.discard("lscjax.__init__")
    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.rst")} - {"index"}
    assert pages == modules
    for name in modules:
        assert f".. automodule:: {name}\n" in (ROOT / "docs" / "api" / f"{name}.rst").read_text()


@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
        + ["-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    # autodoc documented the names of each module's __all__, from their docstrings.
    page = (tmp_path / "html" / "api" / "lscjax.sparse.html").read_text()
    for name in sparse.__all__:
        assert f'id="lscjax.sparse.{name}"' in page, name
    assert "padded block-row" in page  # BlockSparse's docstring
    assert (tmp_path / "html" / "quickstart.html").exists()
