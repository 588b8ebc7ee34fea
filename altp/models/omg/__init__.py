"""Building blocks of the native OMG-LLaVA port.

Upstream facts behind every module are recorded in ``docs/omg_llava_port.md``.
The model itself is assembled elsewhere; this package holds the parts that can
be written and tested without the official weights.
"""
