"""The transport seam: named, bounded channels between actors.

One small interface, two implementations: :class:`MemoryTransport` (bounded
``asyncio.Queue``s, the embedded default and the test double) and, for cluster
mode, a Kafka transport where a channel is a topic partition.  Actor code only
sees :class:`Channel`, so it never knows which one it runs on.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from runtime.codec import decode_message, encode_message


@dataclass(frozen=True)
class Envelope:
    """A received message and where it was in its log: ``(partition, offset)`` on Kafka,
    None in memory.  Offsets travel with the message, never as channel state."""

    message: Any
    position: tuple[int, int] | None = None


class Channel(ABC):
    """A FIFO of messages with backpressure: ``send`` waits while the channel is full."""

    name: str

    @abstractmethod
    async def send(self, message: Any, key: int | None = None) -> None:
        """Queue ``message``; ``key`` picks the partition of a partitioned topic (Kafka)."""

    @abstractmethod
    async def receive(self) -> Envelope:
        """The next message with its position."""

    async def recv(self) -> Any:
        """The next message alone (for readers that do not need its position)."""
        return (await self.receive()).message

    @abstractmethod
    def qsize(self) -> int: ...


class Transport(ABC):
    """Creates channels by name; the same name always gives the same channel."""

    @abstractmethod
    def channel(self, name: str, maxsize: int = 0) -> Channel: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (a no-op in memory)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect (a no-op in memory)."""

    def statistics(self) -> dict[str, Any]:
        return {}


class MemoryChannel(Channel):
    """An ``asyncio.Queue``; with ``roundtrip`` every message crosses msgpack as it would on Kafka."""

    def __init__(self, name: str, maxsize: int, roundtrip: bool) -> None:
        self.name = name
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._roundtrip = roundtrip
        self.sent = 0
        self.bytes = 0

    async def send(self, message: Any, key: int | None = None) -> None:
        if self._roundtrip:
            data = encode_message(message)
            self.bytes += len(data)
            message = data
        await self._queue.put(message)
        self.sent += 1

    async def receive(self) -> Envelope:
        message = await self._queue.get()
        return Envelope(decode_message(message) if self._roundtrip else message)

    def qsize(self) -> int:
        return self._queue.qsize()


class MemoryTransport(Transport):
    """Channels inside one process; zero copies unless ``roundtrip`` asks for msgpack."""

    def __init__(self, roundtrip: bool = False) -> None:
        self.roundtrip = roundtrip
        self._channels: dict[str, MemoryChannel] = {}

    def channel(self, name: str, maxsize: int = 0) -> Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = MemoryChannel(name, maxsize, self.roundtrip)
        return channel

    def statistics(self) -> dict[str, Any]:
        return {
            name: {"depth": ch.qsize(), "sent": ch.sent, "bytes": ch.bytes}
            for name, ch in self._channels.items()
        }
