"""The one error type for bad user input: it carries a message meant for a person, not a traceback."""


class ConfigError(Exception):
    """Bad input from the user: names the key, the value and what would be valid."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return self.args[0]
