"""The one exception type users see: its message is a single sentence naming the field or file."""


class ConfigError(Exception):
    """Bad input: wrong ``args``, missing or corrupt data, missing or corrupt checkpoint."""
