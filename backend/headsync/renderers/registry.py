"""The renderers HeadSync knows, by name: ``@register_renderer("nerf")`` on a :class:`Renderer` subclass.

The built-in renderers are imported on first use. A renderer from elsewhere (a plugin, a test) is made
visible to every entry point - the CLI, the service and its worker processes - by naming its module in
the environment variable ``HEADSYNC_PLUGINS`` (comma-separated module names, imported from ``sys.path``):
only modules the user's own environment names are imported, never files found in media or subject folders.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Callable, Iterator

from ..core.errors import UserError
from ..core.names import is_name

if TYPE_CHECKING:  # the base module imports torch; this one stays light, so listing names is cheap to import
    from .base import Renderer

#: Modules holding the built-in renderers (each registers itself when imported).
BUILTIN = ("headsync.renderers.nerf", "headsync.renderers.gaussian")
PLUGINS_ENV = "HEADSYNC_PLUGINS"
#: What ``train`` uses without ``--renderer`` when the preset names none (``[renderer] default``).
DEFAULT_RENDERER = "nerf"

_RENDERERS: dict[str, "type[Renderer]"] = {}
_loaded = False


def register_renderer(kind: str) -> Callable[["type[Renderer]"], "type[Renderer]"]:
    """Class decorator: register ``cls`` as renderer ``kind`` (sets ``cls.kind``), a name by
    :func:`~headsync.core.names.is_name` (it is stored in checkpoints and shown in the add-on)."""
    from .base import Renderer

    if not is_name(kind):
        raise ValueError(f"renderer name {kind!r} is not a name (letters, digits, '_', '-', single dots)")

    def deco(cls: "type[Renderer]") -> "type[Renderer]":
        if not (isinstance(cls, type) and issubclass(cls, Renderer)):
            raise TypeError(f"@register_renderer({kind!r}) needs a Renderer subclass, got {cls!r}")
        other = _RENDERERS.get(kind)
        if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"renderer {kind!r} is registered twice ({other.__module__} and {cls.__module__})")
        cls.kind = kind
        _RENDERERS[kind] = cls
        return cls

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN:
        importlib.import_module(mod)
    for mod in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise UserError(f"renderer plugin {mod!r} named in {PLUGINS_ENV} cannot be imported ({e})",
                            f"install it, or remove it from {PLUGINS_ENV}")


def renderer_names() -> list[str]:
    """Names of the registered renderers, built-in first."""
    _load()
    builtin = [k for k, c in _RENDERERS.items() if c.__module__.startswith(BUILTIN)]
    return builtin + [k for k in _RENDERERS if k not in builtin]


def preset_renderer(tables: dict) -> str:
    """The renderer a preset's tables choose: ``[renderer] default``, else :data:`DEFAULT_RENDERER`."""
    kind = tables.get("renderer", {}).get("default", DEFAULT_RENDERER)
    if not isinstance(kind, str):
        raise UserError(f"[renderer] default must be a renderer name, got {kind!r}",
                        f"use one of {', '.join(renderer_names())}")
    return kind


def renderer_class(kind: str) -> "type[Renderer]":
    """The renderer registered as ``kind``; an unknown name is a :class:`UserError` listing the known ones."""
    _load()
    if kind not in _RENDERERS:
        raise UserError(f"unknown renderer {kind!r}",
                        f"use one of {', '.join(_RENDERERS)} (a plugin renderer's module goes in {PLUGINS_ENV})")
    return _RENDERERS[kind]


class RegisteredNames:
    """The registered renderer names as a lazy container, for ``choices=`` of the CLI and the job
    parameters: the renderers are imported only when a name is checked or the list is shown."""

    def __iter__(self) -> Iterator[str]:
        return iter(renderer_names())

    def __contains__(self, name: object) -> bool:
        return name in renderer_names()

    def __len__(self) -> int:
        return len(renderer_names())

    def __repr__(self) -> str:
        return repr(renderer_names())


RENDERERS = RegisteredNames()
