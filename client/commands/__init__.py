"""Sub-command groups of the gridvm CLI; each module has ``register(subparsers)``."""
