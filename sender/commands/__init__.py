"""The ``sender`` commands, one module per command group; ``sender.cli`` parses and
dispatches. Each module's ``register(commands, common)`` adds its subcommands, whose
``func`` is an async function of the parsed arguments returning the exit code."""
