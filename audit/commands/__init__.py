"""CLI commands; each module holds one command. audit.cli.COMMANDS names them."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add every command of audit.cli.COMMANDS to group (importing each)."""
    from audit.cli import COMMANDS, cli

    for name in COMMANDS:
        if name not in group.commands:
            cmd = cli.get_command(None, name)
            if cmd is not None:
                group.add_command(cmd, name)
