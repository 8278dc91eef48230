"""Sphinx configuration: the Markdown pages (myst-parser) and the API from the docstrings.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (tests/test_sphinx.py runs it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import lscjax  # noqa: E402

project = "lscjax"
release = lscjax.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# The API pages document the names each public module lists in __all__ (re-exported from
# lscjax._src), in source order, with their signatures and Google-style docstrings.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each member

myst_heading_anchors = 3
html_theme = "alabaster"
