"""The errors deadjax reports to its users, in a leaf module every other imports.

Each carries one sentence for the user: the command line prints it after
``error:`` and exits with the status the docs give (``docs/faults.md``).
"""


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one sentence for the user."""
