"""The one exception type that reaches users as a one-line message (CLI exit status 2)."""


class UsageError(Exception):
    """Bad input from a user: unknown name, invalid attribute, tampered file.

    The message is one line that says what is wrong and what is valid.
    """
