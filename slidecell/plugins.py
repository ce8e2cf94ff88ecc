"""Plug-ins from other packages: modules named by the ``slidecell.plugins`` entry-point group
are imported once, before a registry is first read; importing one registers what it adds (a
slide reader: :func:`slidecell.io.register_reader`; an output format:
:func:`slidecell.io.writers.register_format`; a segmentation backend:
:func:`slidecell.segment.register`). See CONTRIBUTING.md."""

from __future__ import annotations

_LOADED = False


def load_plugins() -> None:
    """Import every ``slidecell.plugins`` entry point (once per process)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from importlib.metadata import entry_points

    from .errors import ConfigError

    for ep in entry_points(group="slidecell.plugins"):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001  (a broken plug-in is named, not a traceback)
            raise ConfigError(f"slidecell plug-in {ep.name} ({ep.value}): cannot be loaded: "
                              f"{type(err).__name__}: {err}") from err
