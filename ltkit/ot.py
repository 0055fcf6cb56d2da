"""Deprecated: ``ltkit.ot`` moved to :mod:`ltkit.methods.ot`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.ot moved to ltkit.methods.ot; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.ot")
