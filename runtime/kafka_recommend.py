"""Recommend over Kafka (``kafka.recommend_requests``): for clients that do not want
HTTP in the path.  A client sends a :class:`RecommendRequest` to ``<prefix>.requests``;
the rankers share that topic's partitions in a consumer group, and the one that reads
a request answers it on ``<prefix>.replies`` with a :class:`RecommendReply` under the
same correlation id, keyed by it.

Nothing is dropped silently: a request read after its deadline is answered with an
error (and counted), a record that is not a request is counted, and a client that
gets no reply within its deadline raises :class:`RecommendTimeout` (and counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.actor import Actor
from runtime.codec import CodecError, decode_message
from runtime.config import Config
from runtime.errors import BadInput, FreshrankError
from runtime.kafka import KafkaChannel, KafkaTransport, client_options, with_backoff
from runtime.messages import RecommendReply, RecommendRequest
from runtime.transport import Envelope

Recommend = Callable[[str, int], Awaitable[list[dict[str, Any]]]]


class RecommendTimeout(FreshrankError, TimeoutError):
    """No ranker replied to a recommend request within its deadline."""

    http_status = 504
    public = True
    traceback = False


class RecommendRefused(BadInput):
    """A ranker answered a recommend request with an error (the reason is the message)."""


class RequestServer(Actor):
    """A ranker's share of the requests topic: answers each request on the replies topic,
    then commits it."""

    def __init__(
        self,
        name: str,
        recommend: Recommend,
        inbox: KafkaChannel,
        replies: KafkaChannel,
        max_k: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("requests", inbox)
        self.ranker = name
        self.recommend = recommend
        self.channel = inbox
        self.replies = replies
        self.max_k = max_k
        self.clock = clock
        self.answered = 0
        self.expired = 0
        self.refused = 0
        self.not_requests = 0

    async def handle_envelope(self, envelope: Envelope) -> None:
        request = envelope.message
        if isinstance(request, RecommendRequest):
            reply = await self.answer(request)
            await self.replies.send(reply, record_key=request.correlation_id.encode())
        else:
            self.not_requests += 1  # no correlation id to answer under
        assert envelope.position is not None
        await self.channel.commit(envelope.position)

    async def answer(self, request: RecommendRequest) -> RecommendReply:
        items: list[dict[str, Any]] = []
        error = ""
        if self.clock() > request.deadline:
            self.expired += 1
            error = "the request's deadline passed before a ranker read it"
        elif not 1 <= request.k <= self.max_k:
            self.refused += 1
            error = f"k must be in 1..{self.max_k} (http.max_k), got {request.k}"
        else:
            try:
                items = await self.recommend(request.user, request.k)
                self.answered += 1
            except BadInput as refusal:
                self.refused += 1
                error = str(refusal)
        return RecommendReply(
            correlation_id=request.correlation_id,
            user=request.user,
            items=[entry["item"] for entry in items],
            scores=[float(entry["score"]) for entry in items],
            error=error,
            ranker=self.ranker,
        )

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "answered": self.answered,
            "expired": self.expired,
            "refused": self.refused,
            "not_requests": self.not_requests,
        }


class KafkaRecommender:
    """A client: ``await recommend(user, k, timeout_s)`` sends a request and waits for its
    reply; the replies of every partition are read from the end at :meth:`start`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.transport = KafkaTransport(config)
        self.consumer: AIOKafkaConsumer | None = None
        self._waiting: dict[str, asyncio.Future[RecommendReply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.sent = 0
        self.timed_out = 0
        self.unmatched = 0

    async def start(self) -> None:
        await self.transport.start()
        replies = self.transport.channel("replies")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.kafka.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.config.kafka.fetch_max_wait_ms,
            **client_options(self.config),
        )
        await with_backoff(consumer.start, "replies consumer", self.config)
        partitions = [TopicPartition(replies.topic, p) for p in range(replies.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end now: a reply sent later is after it
            await consumer.position(tp)
        self.consumer = consumer
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.consumer is not None
        while True:
            record = await self.consumer.getone()
            try:
                reply = decode_message(record.value or b"")
            except CodecError:
                self.unmatched += 1
                continue
            if not isinstance(reply, RecommendReply):
                self.unmatched += 1
                continue
            waiting = self._waiting.pop(reply.correlation_id, None)
            if waiting is None or waiting.done():
                self.unmatched += 1  # another client's, or one whose deadline passed
            else:
                waiting.set_result(reply)

    async def recommend(
        self, user: str, k: int = 10, timeout_s: float = 5.0
    ) -> list[dict[str, Any]]:
        """The ranker's answer, as ``GET /v1/recommend`` gives it (items and scores)."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[RecommendReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        request = RecommendRequest(correlation_id, user, k, time.time() + timeout_s)
        await self.transport.channel("requests").send(request, record_key=correlation_id.encode())
        self.sent += 1
        try:
            async with asyncio.timeout(timeout_s):  # never drops a cancel, as wait_for may
                reply = await future
        except TimeoutError:
            self._waiting.pop(correlation_id, None)
            self.timed_out += 1
            raise RecommendTimeout(
                f"no reply to recommend request {correlation_id} (user {user!r}) within "
                f"{timeout_s:g} s: is a ranker with kafka.recommend_requests running?"
            ) from None
        if reply.error:
            raise RecommendRefused(reply.error)
        return [{"item": i, "score": s} for i, s in zip(reply.items, reply.scores, strict=True)]

    def statistics(self) -> dict[str, int]:
        return {"sent": self.sent, "timed_out": self.timed_out, "unmatched": self.unmatched}

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.consumer is not None:
            await self.consumer.stop()
        await self.transport.stop()
