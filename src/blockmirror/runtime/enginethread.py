"""The one thread that enters a node's engine.

Engine calls do blocking disk I/O (fdatasync) and the engines are not
thread-safe, so every call for one node runs here, in submission order; the
event loop keeps serving sockets meanwhile."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools


class EngineThread:
    def __init__(self, name: str = "engine"):
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    async def call(self, fn, *args, **kwargs):
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
