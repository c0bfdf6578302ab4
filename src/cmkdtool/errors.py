"""Errors that the CLI turns into one line on stderr.

`CmkdError` is bad input (exit status 1): the message names the file, what is wrong and how to fix it.
`CmkdUsageError` is a wrong command line (exit status 2).
"""

from __future__ import annotations


class CmkdError(Exception):
    """Bad input data or files: reported as one line, exit status 1."""

    exit_code = 1


class CmkdUsageError(CmkdError):
    """A command line that cannot work (conflicting or missing options): exit status 2."""

    exit_code = 2
