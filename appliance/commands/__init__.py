"""Commands contributed to ``fame-node`` by their own modules.

Each module is listed in `appliance.cli.COMMAND_MODULES` and has ``register(subparsers)``.
"""
