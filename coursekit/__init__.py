"""coursekit: the support package of the deep-learning-for-computer-vision course.

Notebooks import it as ``import coursekit as ck``. Every concept lives in a module named after it
(``ck.boxes``, ``ck.metrics``, ``ck.data``, ``ck.weights``, ``ck.train``, ``ck.viz``, ``ck.widgets``...);
the two helpers every notebook calls first are re-exported here.
"""

from coursekit.runtime import device, is_offline, resolve_profile, seed_everything

__version__ = "0.1.0"

__all__ = ["device", "seed_everything", "is_offline", "resolve_profile", "__version__"]
