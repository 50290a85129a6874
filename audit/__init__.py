"""audit: launder, detect and verify black-box backdoor watermarks in ONNX image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from audit.errors import AuditError, ConversionError, DataError, ModelError  # noqa: E402

__all__ = ["AuditError", "ConversionError", "DataError", "ModelError", "__version__"]
