"""Errors that the CLI turns into one line on stderr and an exit code.

Library code raises these instead of printing, so Python callers get exceptions and CLI users get
`deployvit: <message>` with the exit codes of docs/DESIGN.md section 3 (2 bad input, 1 a check failed).
"""


class DeployvitError(Exception):
    """Bad input or a missing dependency: exit code 2."""

    exit_code = 2


class MissingDependency(DeployvitError):
    """An optional package (tensorrt, onnxruntime-gpu, ...) is needed but not installed."""


class CheckFailed(DeployvitError):
    """A verification or budget check did not pass: exit code 1."""

    exit_code = 1


class WithinNoise(CheckFailed):
    """A latency budget inside the 95% interval of the measured latency: the measurement cannot
    say MET or NOT MET (exit code 3; rerun on a quieter machine or move the budget)."""

    exit_code = 3
