"""azprov's engine: the state machine, its persistence and the plumbing around it.

Provisioning work lives in the sibling package `states`; this package decides when a step runs, how its
result is persisted, logged and reported. The import name clashes with PyPI's python-statemachine, which is
why azprov lives in a virtual environment of its own (see README, "Installing").
"""

__version__ = "0.1.0"
AGENT_NAME = "azprov"
