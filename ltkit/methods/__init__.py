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

Random streams: inside a run every draw of the engine and of every method comes
from :meth:`ltkit.train.Context.generator` (one recipe, :func:`ltkit.train.stream_seed`
of the run's seed and a stream key such as ``("cmo-fg", epoch, step)``), keyed by
global positions so that any number of processes draws alike.  The tools that run
outside a run take an explicit ``seed`` instead: training the diffusion generator,
sampling and filling with it (the committed generators and fills were made with
those recipes, so they stay), the in-method ``g`` of M2m (``"m2m-g"`` stream),
k-means++'s default generator, and :mod:`ltkit.sampling`'s stand-alone samplers
(seeded ``seed + epoch``, as torch's ``DistributedSampler``).
"""

from . import cmo, cws, feedback, synlt  # noqa: F401  (registers the methods)

__all__ = ["cmo", "cws", "synlt", "feedback"]
