"""Deprecated: ``ltkit.diffusion`` moved to :mod:`ltkit.methods.diffusion`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.diffusion moved to ltkit.methods.diffusion; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.diffusion")
