"""edgeloop: the command-line entry point that dispatches to trainer, agent and controller."""

__version__ = "0.1.0"
