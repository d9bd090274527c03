"""ModelControl: load, reload and unload models of a serving pipeline, without downtime.

A reload reads the model's files afresh, makes and warms the new version in a worker thread while
the old one keeps serving, then swaps the two in one step (see :meth:`ModelRepository.load`).
Requests that already hold the old version finish on it; it is retired in the background once
they are done (:meth:`InferencePipeline.retire`). A load that fails leaves the old version serving
and raises the reason. Loads, reloads and unloads of one model run one at a time; different
models' run side by side. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from visionrpc.errors import ModelNotFoundError
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import LoadedModel, check_model_name
from visionrpc.settings import ModelControlSettings
from visionrpc.types import ModelStatus

log = logging.getLogger(__name__)

Loaded = Callable[[LoadedModel, LoadedModel | None], None]
"""Told (new version, the version it replaced or None) after each successful load."""
Unloaded = Callable[[LoadedModel], None]
"""Told the version that stopped serving after each unload."""


class ModelControl:
    """Changes which models (and versions) ``pipeline`` serves while it serves them."""

    def __init__(self, pipeline: InferencePipeline, settings: ModelControlSettings) -> None:
        self.pipeline = pipeline
        self.repository = pipeline.repository
        self.settings = settings
        self.on_loaded: list[Loaded] = []
        self.on_unloaded: list[Unloaded] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    async def load(self, name: str) -> LoadedModel:
        """Load ``name`` from the model directory, or reload it when it is loaded (as Triton
        does); returns the version now serving."""
        check_model_name(name)
        async with self._lock(name):
            return await self._load(name)

    async def reload(self, name: str) -> LoadedModel:
        """Reload a loaded model; ModelNotFoundError when it is not loaded, so that a typo in
        a deployment script does not load a model nobody asked to serve."""
        check_model_name(name)
        async with self._lock(name):
            if name not in self.repository:
                raise ModelNotFoundError(
                    f"model {name!r} is not loaded, so there is nothing to reload; load it "
                    f"(LoadModel) instead. Loaded models: {', '.join(self.repository.names)}"
                )
            return await self._load(name)

    async def unload(self, name: str) -> ModelStatus:
        """Stop serving ``name`` (requests already running finish); its entry afterwards."""
        check_model_name(name)
        async with self._lock(name):
            old = await asyncio.to_thread(self.repository.unload, name)
            if old is not None:
                for listener in self.on_unloaded:
                    listener(old)
                self._retire(old)
            return await asyncio.to_thread(self.repository.status, name)

    async def settled(self) -> None:
        """Wait until every replaced or unloaded version is retired."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self) -> None:
        """Wait for retirements in progress (before the pipeline closes)."""
        await self.settled()

    async def _load(self, name: str) -> LoadedModel:
        swap = await asyncio.to_thread(self.repository.load, name, self.pipeline.warm)
        for listener in self.on_loaded:
            listener(swap.new, swap.old)
        if swap.old is not None:
            self._retire(swap.old)
        return swap.new

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.create_task(
            self.pipeline.retire(model, self.settings.retire_timeout_s),
            name=f"retire-{model.name}-g{model.generation}",
        )
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("retiring %s failed", task.get_name(), exc_info=task.exception())

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
