"""A federated-learning poisoning simulator built on the LeadFL client update.

Submodules are imported on demand: `sim.config` and `sim.cli` load without touching the
datasets, and `sim.runner` pulls in the training stack only when a run starts.
"""

from sim.errors import ConfigError

__all__ = ["ConfigError"]
