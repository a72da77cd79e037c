"""Subcommands of the ``removalnet`` CLI, one module each (see ``removalnet.cli``)."""
