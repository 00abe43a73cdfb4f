"""Following a durable agent run from outside it: `DurableAgent.run_stream_events()` and `run_stream()`.

The run itself is an ordinary durable workflow that writes its events to its durable stream
`"events"`; these readers start it (or attach to it, by workflow id) and read that stream. So a
caller that goes away loses nothing: the run goes on, and the same call with the same `workflow_id`
and the `offset` it had reached picks up where it left off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic

from pydantic import TypeAdapter
from pydantic_ai.messages import (
    AgentStreamEvent,
    FinalResultEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.output import OutputDataT
from pydantic_ai.run import AgentRunResultEvent

from .._management import WorkflowHandle
from ..runtime import active_runtime

if TYPE_CHECKING:
    from ._agent import DurableRunResult

EVENTS_STREAM = "events"
"""The durable stream an agent run's events go to (`stream_events=True`, or a run followed with
`run_stream_events()` / `run_stream()`)."""
RESULT_EVENT_KIND = "perdure_result"
"""The `event_kind` of the last value of a `DurableAgent` run's stream: `{"event_kind": ..., "output": ...}`."""

EVENT: TypeAdapter[AgentStreamEvent] = TypeAdapter(AgentStreamEvent)


class DurableRunEvents(Generic[OutputDataT]):
    """The events of one durable agent run, live, ending with an `AgentRunResultEvent`.

    An async iterator and an async context manager (as pydantic-ai's `run_stream_events()` returns).
    The run starts on the first `__anext__()`; `workflow_id` names it from then on, and `offset` is
    the stream offset of the next event: pass both to `run_stream_events()` again to resume.
    Leaving early does not stop the run.
    """

    def __init__(
        self,
        start: Callable[[], Awaitable[WorkflowHandle]],
        result: Callable[[dict[str, Any], str], DurableRunResult[OutputDataT]],
        offset: int,
    ) -> None:
        self._start = start
        self._to_result = result
        self.offset = offset
        self.workflow_id: str | None = None
        self._handle: WorkflowHandle | None = None
        self._events: AsyncIterator[Any] | None = None
        self._finished = False
        self.result: DurableRunResult[OutputDataT] | None = None
        """The run's result, once the final event has been produced."""

    def __aiter__(self) -> DurableRunEvents[OutputDataT]:
        return self

    async def __aenter__(self) -> DurableRunEvents[OutputDataT]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (the run itself goes on)."""
        self._finished = True
        events, self._events = self._events, None
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def begin(self) -> str:
        """Start (or attach to) the run now, rather than at the first event; returns its workflow id."""
        if self._handle is None:
            self._handle = await self._start()
            self.workflow_id = self._handle.workflow_id
            stream = active_runtime().read_stream(self.workflow_id, EVENTS_STREAM, self.offset)
            self._events = stream.__aiter__()
        return self._handle.workflow_id

    async def __anext__(self) -> AgentStreamEvent | AgentRunResultEvent[OutputDataT]:
        if self._finished:
            raise StopAsyncIteration
        await self.begin()
        assert self._events is not None and self._handle is not None
        while True:
            try:
                raw = await self._events.__anext__()
            except StopAsyncIteration:
                break
            self.offset += 1
            if isinstance(raw, dict) and raw.get("event_kind") == RESULT_EVENT_KIND:
                continue  # the final event below carries the whole result, not only the output
            return EVENT.validate_python(raw)
        # The stream ended: the run finished. Its result (or its error) ends the iteration.
        self._finished = True
        self._events = None
        assert self.workflow_id is not None
        self.result = self._to_result(await self._handle.result(), self.workflow_id)
        return AgentRunResultEvent(result=self.result)  # type: ignore[arg-type]  # a DurableRunResult


class DurableStreamedRun(Generic[OutputDataT]):
    """What `DurableAgent.run_stream()` yields: the final response's text as it is produced, then the output.

    Unlike pydantic-ai's `StreamedRunResult`, the run is not tied to this reader: it is a durable
    workflow that finishes (and can be resumed by `workflow_id`) whether or not anyone reads.
    """

    def __init__(self, events: DurableRunEvents[OutputDataT]) -> None:
        self._events = events

    @property
    def workflow_id(self) -> str | None:
        return self._events.workflow_id

    @property
    def result(self) -> DurableRunResult[OutputDataT] | None:
        """The run's result once the stream has been read to its end."""
        return self._events.result

    async def stream_events(self) -> AsyncIterator[AgentStreamEvent | AgentRunResultEvent[OutputDataT]]:
        """Every remaining event of the run, ending with its `AgentRunResultEvent`."""
        async for event in self._events:
            yield event

    async def stream_text(self, *, delta: bool = False) -> AsyncIterator[str]:
        """The text of the final response as it streams: the whole text so far, or (`delta=True`) each piece.

        The text is the response that ended the run (after its `FinalResultEvent`), as with pydantic-ai's
        `stream_text()`; text the model wrote before calling tools is not part of it.
        """
        text = ""
        started: dict[int, str] = {}  # text parts of the current response, by index, as far as streamed
        final_index: int | None = None
        async for event in self._events:
            piece = ""
            if isinstance(event, PartStartEvent):
                if event.index == 0:
                    started.clear()  # a new response
                if isinstance(event.part, TextPart):
                    started[event.index] = event.part.content
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                if event.index == final_index:
                    piece = event.delta.content_delta
                elif event.index in started:
                    started[event.index] += event.delta.content_delta
            elif isinstance(event, FinalResultEvent) and event.tool_name is None and started:
                # The output is the text part that just started (its start came before this event).
                final_index = max(started)
                piece = started[final_index]
            if piece:
                text += piece
                yield piece if delta else text

    async def get_output(self) -> OutputDataT:
        """Read the rest of the run and return its output."""
        async for _ in self._events:
            pass
        assert self._events.result is not None
        return self._events.result.output
