"""The installed package is what `import lscjax` finds, wherever Python is started."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lscjax

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_import_from_the_clones_parent_finds_the_package(tmp_path):
    """Started next to a folder named lscjax (a clone), Python imports the package, not the folder.

    With the package under src/, the clone's root holds no importable `lscjax` directory, so
    it cannot shadow the installed package as a namespace package.
    """
    (tmp_path / "lscjax").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import lscjax; print(lscjax.__file__); print(lscjax.compress)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(Path(lscjax.__file__)) and out[0].endswith("__init__.py")
    assert out[1].startswith("<function compress")
