"""Deprecated: ``ltkit.synlt`` moved to :mod:`ltkit.methods.synlt`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.synlt moved to ltkit.methods.synlt; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.synlt")
