"""Event sources that push into the system: the built-in simulator at a set rate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from actors.simulator import Simulator, SimulatorConfig
from runtime.actor import Actor
from runtime.config import SimulatorSection

IngestFn = Callable[[list[Any]], Awaitable[Any]]


class SimulatorSource(Actor):
    """Feeds simulated events (users with drifting tastes, new items) at ``rate`` events/s."""

    def __init__(self, config: SimulatorConfig, ingest: IngestFn, rate: float, batch: int) -> None:
        super().__init__("simulator")
        self.simulator = Simulator(config)
        self.ingest = ingest
        self.rate = rate
        self.batch = batch
        self.sent = 0

    @classmethod
    def from_section(cls, section: SimulatorSection, ingest: IngestFn) -> SimulatorSource | None:
        """The source ``[simulator]`` asks for (None: disabled)."""
        if not section.enabled:
            return None
        world = SimulatorConfig(seed=section.seed, n_users=section.n_users, n_items=section.n_items)
        return cls(world, ingest, section.rate, section.batch)

    async def start(self) -> None:
        if self._started:
            return
        await super().start()
        await self.ingest(self.simulator.items())
        self.spawn(self._run(), "feed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.batch / self.rate
        next_at = loop.time()
        while True:
            events = self.simulator.next_batch(self.batch)
            await self.ingest(events)
            self.sent += len(events)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def statistics(self) -> dict[str, Any]:
        return {"sent": self.sent, "rate": self.rate, **self.simulator.statistics()}
