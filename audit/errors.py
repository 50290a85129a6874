"""One exception hierarchy for everything the toolkit refuses or fails at."""

from __future__ import annotations

import click


class AuditError(click.ClickException):
    """Base of every error the CLI reports as one line, ``error: ...``, with exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", file=file, err=file is None)


def one_line(text) -> str:
    """text with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


class ModelError(AuditError):
    """The ONNX file is unreadable or not an image classifier we can audit."""


class DataError(AuditError):
    """The data set is missing, empty, undecodable or does not fit the model."""


class ConversionError(AuditError):
    """ONNX -> torch conversion failed or is numerically not faithful.

    ``node`` names the first diverging / refused node when known.
    """

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 opset: int | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.op = op
        self.opset = opset
