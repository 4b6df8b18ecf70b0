"""Sphinx configuration for the fgsmkit documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` from the repository root;
``-b doctest`` runs the code on the pages.
"""

from __future__ import annotations

import doctest
import os
import sys

# Document the source tree beside this folder, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

import fgsmkit  # noqa: E402

project = "fgsmkit"
author = "fgsmkit developers"
copyright = "2026, fgsmkit developers"
release = fgsmkit.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# The generated Markdown reports are pulled into pages with MyST's ``include``; not pages themselves.
exclude_patterns = ["_build", "reproduction/*.md", "benchmarks/*.md"]

# NumPy-style docstrings; the types come from the docstrings and the signatures' hints.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False

# No network at build time: no intersphinx, nothing fetched.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# Check exception messages too (Sphinx ignores their detail by default): they are documented.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
doctest_global_setup = """
import torch
import fgsmkit as fk
torch.manual_seed(0)
"""



def _skip_repr_hooks(app, what, name, obj, skip, options):
    # extra_repr is nn.Module's hook for print(model), not part of the API.
    return True if name == "extra_repr" else skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_repr_hooks)


html_theme = "furo"
html_title = f"fgsmkit {release}"
html_static_path: list[str] = []
