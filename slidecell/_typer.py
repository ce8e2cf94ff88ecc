"""Typer command classes for slidecell's CLI: help tables that read well."""

from __future__ import annotations

from typer.core import TyperArgument, TyperCommand, TyperGroup


def _no_type(ctx=None):
    return None


class _FlagHelp:
    """Help tables without Python types (typer 0.29 shows ``<bool>`` beside ``--help`` and
    ``<path>`` / ``<list[str]>`` beside arguments, whose names already say what they take)."""

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperArgument):
                p.display_type_rich = _no_type
        return params


class HelpCommand(_FlagHelp, TyperCommand):
    pass


class HelpGroup(_FlagHelp, TyperGroup):
    pass
