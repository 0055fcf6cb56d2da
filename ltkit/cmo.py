"""Deprecated: ``ltkit.cmo`` moved to :mod:`ltkit.methods.cmo`; this alias goes in the next release."""

import importlib
import sys
import warnings

warnings.warn("ltkit.cmo moved to ltkit.methods.cmo; import it from there (the old path goes in the next release).",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("ltkit.methods.cmo")
