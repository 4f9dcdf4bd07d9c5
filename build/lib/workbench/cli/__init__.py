"""``python -m workbench plan|data|train|infer ...``: one module per subcommand.

Each module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` (the exit code); ``main`` wires them and turns errors into sentences.
"""
