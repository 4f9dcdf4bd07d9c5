"""Errors meant for people.

A ``UserError`` carries one sentence that names the problem and the fix. The CLI
prints it without a traceback and exits with ``exit_code`` (2: unusable input).
Anything else is a bug: its traceback goes to the log file, not the screen.
"""


class UserError(Exception):
    """Bad input from the user: a clear message naming the field/row/flag and the fix."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
