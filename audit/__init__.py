"""audit: launder, detect and verify black-box backdoor watermarks in ONNX image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from audit.errors import AuditError, ConversionError, DataError, ModelError  # noqa: E402


def __getattr__(name: str):
    # Lazy: `import audit` stays cheap (no torch) until the API is used.
    if name in ("launder", "detect", "verify"):
        from audit import api

        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


__all__ = ["AuditError", "ConversionError", "DataError", "ModelError", "__version__",
           "detect", "launder", "verify"]
