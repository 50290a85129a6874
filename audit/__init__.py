"""audit: launder, detect and verify black-box backdoor watermarks in ONNX image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

import importlib as _importlib  # noqa: E402
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402

from audit.errors import AuditError, ConversionError, DataError, ModelError  # noqa: E402

# API functions that share their name with a submodule (audit/launder.py, audit/verify.py).
# Importing a submodule binds it over the package attribute, so `from audit import launder`
# gave the module, not the function. The submodule is made callable instead: calling it calls
# the API function, and `audit.launder.LaunderConfig`, `import audit.launder as m` and
# monkeypatch("audit.launder.x") keep working.
_SHARED_NAMES = ("launder", "verify")


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from audit import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(_types.ModuleType):
    def __setattr__(self, name, value):
        if name in _SHARED_NAMES and type(value) is _types.ModuleType \
                and value.__name__ == f"audit.{name}":
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    # Lazy: `import audit` stays cheap (no torch) until the API is used.
    if name in _SHARED_NAMES:
        return _importlib.import_module(f"audit.{name}")
    if name == "detect":
        from audit import api

        return api.detect
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


__all__ = ["AuditError", "ConversionError", "DataError", "ModelError", "__version__",
           "detect", "launder", "verify"]
