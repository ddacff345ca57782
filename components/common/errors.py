"""The project's one error base: every error it raises on purpose says what it means for the
person who sees it.

``exit_code`` is what ``mlops`` exits with: 2 for the user's mistake (a bad option, a missing
file, an unknown name: doing the same again fails the same way), 1 for a failure (storage, a
deployment, a pipeline step). ``http_status`` is the answer at a serving edge (an HTTP
endpoint of the project): 400 for the caller's mistake, 500 for a failure, or a more precise
status a class names (409 for a conflict). Both are class attributes, so a subclass changes
them by saying so, and the command line maps an error by its attribute in one table
(``components.cli.common.explain_error``), never by the builtin class it also derives from.

Errors keep their builtin bases (``ValueError``, ``RuntimeError``, ``FileNotFoundError``…)
where callers catch those: ``class PolicyError(UserError, ValueError)``.
"""

from __future__ import annotations

#: Exit codes of ``mlops``.
EXIT_FAILURE = 1
EXIT_USER_MISTAKE = 2


class MlopsError(Exception):
    """A failure the project raises on purpose: exit code 1, HTTP 500."""

    exit_code: int = EXIT_FAILURE
    http_status: int = 500


class UserError(MlopsError):
    """The user's (or a caller's) mistake, said in the message: exit code 2, HTTP 400."""

    exit_code = EXIT_USER_MISTAKE
    http_status = 400
