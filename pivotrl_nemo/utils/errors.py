"""The project's error types, so that the CLI can tell a user's mistake from a failure.

``UserError``: something the user can fix (bad data, bad configuration, stages run out of order,
a run directory held by another process, no pivots): the CLI prints its message alone and exits 2.
Anything else that escapes a stage is a failure: one line with its type and message, exit 1
(``--debug`` or ``PIVOTRL_DEBUG=1`` shows the traceback).
"""


class PivotRLError(Exception):
    """Base of the project's own errors."""


class UserError(PivotRLError):
    """A problem the user can fix; the message says what and how."""
