"""The methods wing: every method that plugs into the training engine.

Importing this package registers every method with :func:`ltkit.train.register_method`
(as timm registers its models by importing its ``models`` package); the engine
imports it once, the first time a config names a method it does not know, and
names no method module itself.

============  =================================================================
module        what it holds
============  =================================================================
``cmo``       CMO and the CutMix family (``cutmix``, ``cmo``, ``cmo-minor``, ``cmo-back``)
``cws``       classwise splitting (``cws``, ``static-split``)
``synlt``     M2m and Syn-LT (``m2m``, ``synlt``); its OT term lives in ``ot``
``feedback``  feedback-guided diffusion synthesis (``feedback-fill``); its generator lives in ``diffusion``
============  =================================================================

A method uses only the engine's public services (:class:`ltkit.train.Context`,
:class:`ltkit.train.Batch`, :func:`ltkit.train.load_trained`).
"""

from . import cmo, cws, feedback, synlt  # noqa: F401  (registers the methods)

__all__ = ["cmo", "cws", "synlt", "feedback"]
