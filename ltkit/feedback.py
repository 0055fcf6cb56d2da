"""Deprecated: ``ltkit.feedback`` moved to :mod:`ltkit.methods.feedback`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.feedback moved to ltkit.methods.feedback; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.feedback")
