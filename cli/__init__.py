"""The ``skulens`` command line: the composition root, the one place that wires every layer.

``sdk`` (the runtime, ``import skulens``) < ``training`` < ``export`` < ``bench`` < ``cli``: each
sub-command module imports what it wires only when it runs, so the runtime commands (``predict``,
``eval``, ``generate``, ``gallery``, ``serve``) never load torch.
"""
from ._main import build_parser, main

__all__ = ["main", "build_parser"]
