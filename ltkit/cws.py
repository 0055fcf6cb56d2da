"""Deprecated: ``ltkit.cws`` moved to :mod:`ltkit.methods.cws`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.cws moved to ltkit.methods.cws; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.cws")
