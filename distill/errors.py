"""The one exception type for user mistakes.

Anything the user can fix (a bad config value, a missing data folder, a corrupt file, a
teacher checkpoint that does not match the config) raises `DistillError` with a one-line
message that names what is wrong and how to fix it. The CLI prints it without a traceback
and exits with status 2; library users can catch it.
"""


class DistillError(Exception):
    """A user-fixable problem; `str(err)` is a single line meant for the user."""
