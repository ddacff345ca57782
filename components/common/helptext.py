"""Help text of every command line the project ships (``mlops``, ``mlops serve``, the router,
the ``torchrun`` training program): each option's default said once, in one way."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there
    is none to show (required options, flags, empty values)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.help == argparse.SUPPRESS or "default" in text.lower() or action.required
                or not action.option_strings
                or action.default is None or action.default is False
                or action.default in ("", [], argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class DescriptionFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """A help whose description is printed as written, defaults as above."""
