"""What every verb group of ``mlops`` shares: one help formatter, the option checks, the
progress display and the one table that turns an error into an exit code and one line.

A verb group module (``components/cli/<group>.py``) has ``add_commands(sub)``, which adds
its parsers to the top-level subparsers; every parser is an :class:`MlopsParser`, so each
option's help shows its default without the module asking for it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable

from components.common.errors import EXIT_FAILURE, EXIT_USER_MISTAKE, MlopsError, UserError
from components.common.helptext import HelpFormatter

# ------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------


class MlopsParser(argparse.ArgumentParser):
    """Every parser and sub-parser shows each option's default in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # The innermost parser that parsed the command line, for errors found after parsing
        # (an unknown option is answered with that sub-command's usage).
        self.set_defaults(_parser=self)


# ------------------------------------------------------------------------------------------
# Option checks: before any work starts, one line that names the option, the value and
# what is expected
# ------------------------------------------------------------------------------------------


class OptionError(UserError, ValueError):
    """An option's value the command cannot use; the message names option, value and what
    is expected."""


def option_error(option: str, value, expected: str) -> OptionError:
    return OptionError(f"{option} {value!r}: expected {expected}.")


def check_range(option: str, value, low=None, high=None, *, low_open=False) -> None:
    """A number within bounds (None: the option was not given)."""
    if value is None:
        return
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and value > high):
        bounds = (f"{'>' if low_open else '>='} {low}" if high is None
                  else f"between {low} and {high}")
        raise option_error(option, value, f"a number {bounds}")


def check_whole_number(option: str, value: int) -> int:
    """A count of at least one (parts, processes)."""
    if value < 1:
        raise OptionError(f"{option} {value}: expected a whole number >= 1.")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the argument on failure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a version number (1 or more)")
    return value


def parse_canary_steps(option: str, text: str) -> list[int]:
    """``10,50`` -> [10, 50]: increasing whole percentages between 1 and 99."""
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise option_error(option, text,
                           "comma-separated whole percentages such as 10,50") from None
    if any(not 1 <= s <= 99 for s in steps) or steps != sorted(set(steps)):
        raise option_error(option, text, "increasing percentages between 1 and 99, "
                                         "such as 10,50")
    return steps


def check_storage(uris: dict[str, str]) -> None:
    """Checks each store URI an option names before any work starts (a bad ``s3:`` URI, an
    ``s3://`` URI without a configured endpoint), naming the option; says once on stderr
    that an endpoint without a scheme is taken as https (the S3 client's default)."""
    from components.common.storage import StorageConfigError, open_store

    schemeless = ""
    for option, uri in uris.items():
        if not uri:
            continue
        try:
            open_store(uri)
        except (StorageConfigError, ValueError) as exc:
            raise OptionError(f"{option} {uri!r}: {exc}") from None
        if str(uri).startswith("s3://"):
            from components.common.storage.s3 import s3_settings_from_env

            endpoint = s3_settings_from_env()
            raw = next((os.environ[v] for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                                 "S3_ENDPOINT_URL", "S3_ENDPOINT",
                                                 "MINIO_ENDPOINT") if os.environ.get(v)), "")
            if raw and "://" not in raw:
                schemeless = f"{raw} -> {endpoint.url}"
    if schemeless:
        print(f"note: the S3 endpoint has no scheme ({schemeless}); write http://… or "
              "https://… in AWS_ENDPOINT_URL to choose (S3_USE_HTTPS=0 for http).",
              file=sys.stderr)


def parse_assignments(items: list[str], option: str) -> dict:
    """``NAME=VALUE`` strings as a dict; a value that reads as JSON is taken as JSON."""
    out = {}
    for item in items:
        if "=" not in item:
            raise OptionError(f"Invalid {option} {item!r}. Expect NAME=VALUE.")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def retrain_defaults(registry_uri: str, model: str, home, data_uri: str = "") -> dict:
    """What a local retraining of production uses when not told: the lake production was
    trained from, read with the ingestion options its dataset was ingested with (a labels
    CSV, layout, classes, aliases, test fraction), and its input size (its lineage:
    ``components.retrain.core.production_training_options``), so that `mlops run training
    --data lake --labels-csv lake/labels.csv` is followed by a retraining that reads that
    lake; ``data_uri`` where given (another lake keeps only the input size), else
    ``$MLOPS_HOME/lake`` where production has no lineage to say."""
    from components.retrain.core import production_training_options

    out = production_training_options(registry_uri, model, data_uri)
    if data_uri:
        out["data_uri"] = data_uri
    out.setdefault("data_uri", os.fspath(home / "lake"))
    return out


# ------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress display on stderr, throttled to a few updates a second."""

    def __init__(self, label: str):
        self.label = label
        self.last = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.25:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        end = "\n" if done >= total else ""
        print(f"\r{self.label}: {done}/{total} ({pct:.0f}%, {rate:.0f}/s)", end=end,
              file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Errors: one table
# ------------------------------------------------------------------------------------------


def _not_found(exc: FileNotFoundError) -> str:
    return f"{exc.strerror or 'not found'}: {exc.filename}" if exc.filename else str(exc)


def _disk_full(exc: OSError) -> str:
    from components.common.paths import mlops_home

    where = exc.filename or f"the local stores ({mlops_home()}) or the temporary folder"
    return (f"no space left on the disk of {where}. Free space there (`df -h`), or point "
            "MLOPS_HOME or the store URIs at a disk that has some.")


#: Errors from outside the project (Python's, the libraries'), the most specific class
#: first: (class, exit code, the line to print). The project's own errors say their exit
#: code themselves (:class:`components.common.errors.MlopsError`).
FOREIGN_ERRORS: tuple[tuple[type[BaseException], int, Callable], ...] = (
    (KeyError, EXIT_USER_MISTAKE, lambda e: str(e.args[0]) if e.args else "missing key"),
    (FileNotFoundError, EXIT_USER_MISTAKE, _not_found),
    (ValueError, EXIT_USER_MISTAKE, str),
    (PermissionError, EXIT_FAILURE,
     lambda e: f"permission denied: {e.filename or e}. Choose a path you can write to, or "
               "fix its permissions."),
    (IsADirectoryError, EXIT_USER_MISTAKE,
     lambda e: f"{e.filename} is a directory; a file path is expected there."),
    (NotADirectoryError, EXIT_USER_MISTAKE,
     lambda e: f"{e.filename}: a part of this path is a file, not a directory."),
    (OSError, EXIT_FAILURE, lambda e: _disk_full(e) if e.errno == errno.ENOSPC else str(e)),
    (RuntimeError, EXIT_FAILURE, str),
)


def explain_error(exc: BaseException) -> tuple[int, str]:
    """An exit code and one line for an error: 2 for a user's mistake, 1 for a failure."""
    if isinstance(exc, MlopsError):
        return exc.exit_code, str(exc)
    for cls, code, message in FOREIGN_ERRORS:
        if isinstance(exc, cls):
            return code, message(exc)
    return EXIT_FAILURE, (f"unexpected {type(exc).__name__}: {exc}. This is a bug; run the "
                          "command again with --debug and report the traceback.")
