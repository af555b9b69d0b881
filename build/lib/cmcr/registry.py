"""One name → object registry for every swappable part (Pointcept's ``Registry``).

A downstream dataset, a backbone, an image encoder or a loss term is one module that registers
itself with ``@REGISTRY.register("name")``; code that needs it asks ``REGISTRY.get(name)``, never
``if name == "..."``. An unknown name is an error listing the known ones, never a fallback.

The project's registries are defined here, at the bottom floor, with the modules that fill
them (``homes``): those are imported on the first lookup, so that the config check (floor 1)
can list the names without importing torch or spconv when it is itself imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

from cmcr.errors import CMCRError


class Registry:
    """Names → registered objects of one ``kind``, filled by the modules in ``homes``."""

    def __init__(self, kind: str, homes: tuple[str, ...] = (), reserved: tuple[str, ...] = ()):
        self.kind = kind
        self.homes = homes
        self.reserved = reserved  # names taken by something that is not registered here
        self._items: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register the decorated object as ``name`` (a taken name is an error)."""

        def wrap(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return wrap

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` as ``name``; registering the same object again is a no-op."""
        if name in self.reserved or self._items.get(name, obj) is not obj:
            raise CMCRError(f"{self.kind} '{name}' is already defined")
        self._items[name] = obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests that register a part for one case only)."""
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before the imports: a home may look names up while it loads
        try:
            for home in self.homes:
                # the one import that may go up the floors: the homes register themselves here,
                # and loading them lazily keeps this module (and the config check) light
                importlib.import_module(home)
        except BaseException:
            self._loaded = False
            raise

    def get(self, name: str) -> Any:
        """The object registered as ``name``; CMCRError listing the known names if none."""
        self._load()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise CMCRError(f"unknown {self.kind} {name!r}: expected one of {known}")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        self._load()
        return tuple(self._items)

    def items(self) -> list[tuple[str, Any]]:
        """(name, object) pairs in registration order."""
        self._load()
        return list(self._items.items())

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


# ---- the project's registries (docs/architecture.md, How to extend) --------------------------
# downstream datasets: one module each under cmcr/datasets/ registering a DownstreamDataset
DATASETS = Registry("dataset", homes=("cmcr.datasets.nuscenes", "cmcr.datasets.semantickitti"))
# sparse 3D backbones: factories f(in_channels, cfg: ModelConfig) -> nn.Module
BACKBONES = Registry("backbone", homes=("cmcr.models.backbone",))
# image trunks: factories f() -> nn.Module, (I, 3, H, W) -> (I, out_dim, H/32, W/32)
IMAGE_ENCODERS = Registry("image encoder", homes=("cmcr.models.resnet",))
# loss terms added beside the built-in ones: fn(TermInputs) -> scalar (cmcr.losses.registry
# refuses the built-in names, the typed fields of LossWeights)
LOSS_TERMS = Registry("loss term", homes=("cmcr.losses.extra",))
