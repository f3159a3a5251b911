"""Sub-commands of the ``attnconv`` command line, one module each (discovered by cli.py)."""
