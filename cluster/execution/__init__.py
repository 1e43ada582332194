"""Execution (layer 3, docs/design.md): where workers run and how they train together.

``backend.py`` (the seam: ``Backend``, ``LocalBackend``), ``ray_backend.py`` (one actor per worker),
``plan.py`` (a config -> each worker's spec and rows), ``protocols.py`` (MoNNA and the parameter
server behind one interface), ``session.py`` (rounds and stages, fault handling), ``training.py``
(the training job that writes a state directory), ``hooks.py``, ``ensemble.py``, ``progress.py``."""
