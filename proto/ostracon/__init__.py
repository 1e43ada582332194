"""ostracon: robust collaborative training on Ray with exact and approximate machine unlearning.

Subpackages: ``ostracon.aggregator`` (robust rules, pure tensor maths), ``ostracon.nodes`` (what runs
inside one worker), ``ostracon.cluster`` (what spans workers: backends, training, unlearning, CLI) and
``ostracon.v1`` (the gRPC API's generated stubs).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ostracon")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
