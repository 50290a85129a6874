"""CLI commands; each module holds one command."""

from __future__ import annotations

import importlib

import click

_COMMANDS = {
    "inspect": "audit.commands.inspect",
    "evaluate": "audit.commands.evaluate",
    "launder": "audit.commands.launder",
    "detect": "audit.commands.detect",
    "verify": "audit.commands.verify",
    "demo": "audit.commands.demo",
    "zoo": "audit.models_zoo.cli",
}


def register(group: click.Group) -> None:
    for name, module in _COMMANDS.items():
        if name in group.commands:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # not written yet
            raise
        cmd = getattr(mod, name, None) or getattr(mod, "command", None)
        if cmd is not None:
            group.add_command(cmd, name)
