"""ModelWatch: keep the served models in step with the model directory, by polling it.

Every ``interval_s`` it lists the directory and notes each model entry's files (relative path,
size, modification time). A change is acted on once the entry looked the same at two polls in a
row, so a model still being copied is not loaded half-written: a new entry is loaded, a changed one
reloaded (zero-downtime, see :mod:`visionrpc.runtime.control`), a removed one unloaded. A failure
is logged and leaves the old version serving; the entry is tried again when its files change again.
Only changes are acted on: a model unloaded through the API stays unloaded until its files change.

Polling rather than file-system events (inotify, ``watchfiles``): it needs no extra dependency,
works on network and container volume mounts where events are not delivered (a Kubernetes
ConfigMap swaps a symlink), and "the files stopped changing" is two equal polls.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from visionrpc.runtime.control import ModelControl
from visionrpc.runtime.repository import model_entries

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]
"""An entry's files: (path relative to the entry, size, modification time in ns), sorted."""


def signature(entry: Path) -> Signature:
    """What the entry's files look like now; empty when it vanished meanwhile."""
    try:
        if entry.is_file():
            st = entry.stat()
            return (("", st.st_size, st.st_mtime_ns),)
        files = []
        for path in sorted(entry.rglob("*")):
            if path.is_file():
                st = path.stat()
                files.append((str(path.relative_to(entry)), st.st_size, st.st_mtime_ns))
        return tuple(files)
    except OSError:
        return ()


def snapshot(directory: Path) -> dict[str, Signature]:
    """Every model entry of ``directory`` by name, with its signature."""
    return {name: signature(entry) for name, entry in model_entries(directory).items()}


class ModelWatch:
    """Polls ``control``'s model directory and applies what changed (see the module doc)."""

    def __init__(self, control: ModelControl, interval_s: float) -> None:
        self.control = control
        self.directory = control.repository.directory
        self.interval_s = interval_s
        self._applied: dict[str, Signature] = {}  # what the served models were made from
        self._seen: dict[str, Signature | None] = {}  # a change seen once, not yet stable

    async def run(self) -> None:
        """Poll until cancelled. The first look notes the files of the models being served; any
        other model found then is new (added since the start-up) and is loaded like one."""
        now = await asyncio.to_thread(snapshot, self.directory)
        self._applied = {name: sig for name, sig in now.items() if name in self.control.repository}
        log.info("watching %s for model changes every %.3g s", self.directory, self.interval_s)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception:  # a bug here must not end the watch
                log.exception("model watch: poll of %s failed", self.directory)

    async def poll(self) -> None:
        """One look at the directory: act on every change that stayed the same since the last."""
        now = await asyncio.to_thread(snapshot, self.directory)
        for name in sorted(set(self._applied) | set(now) | set(self._seen)):
            current = now.get(name)
            if current == self._applied.get(name):
                self._seen.pop(name, None)
                continue
            if name not in self._seen or self._seen[name] != current:
                self._seen[name] = current  # changed since the last poll: wait for it to settle
                continue
            del self._seen[name]
            await self._apply(name, current)
            if current is None:
                self._applied.pop(name, None)
            else:
                self._applied[name] = current

    async def _apply(self, name: str, current: Signature | None) -> None:
        control = self.control
        try:
            if current is None:
                if name in control.repository:
                    log.info("model watch: %s was removed from %s; unloading", name, self.directory)
                    await control.unload(name)
                return
            verb = "reloading" if name in control.repository else "loading"
            log.info("model watch: %s changed in %s; %s", name, self.directory, verb)
            await control.load(name)
        except Exception as exc:
            log.error("model watch: %s: %s", name, exc)
