"""InferenceMethods: each method converts the request, calls the runtime pipeline, converts back.

The servicer also owns the service's lifecycle for VisionServer (see ``server.app.Service``): it is
registered before start-up (gRPC needs its handlers up front), loads the models in ``start`` and
closes the pipeline in ``stop``; until the models are loaded its calls fail with UNAVAILABLE and
health reports NOT_SERVING. It also holds the :class:`ModelControl` (and, when
``model_control.poll_interval_s`` is set, the directory watch) that both APIs' model control
methods use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np

from visionrpc.errors import NotReadyError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.control import ModelControl
from visionrpc.runtime.fairness import ClientSlots
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.raw import RawResult
from visionrpc.runtime.repository import LoadedModel, ModelRepository
from visionrpc.runtime.watch import ModelWatch
from visionrpc.server.correlation import REQUEST_ID, new_request_id
from visionrpc.server.fairness import client_key, in_flight_refusal
from visionrpc.server.status import Context, map_errors, rich_status
from visionrpc.server.streams import FrameHandler, StreamLimits, serve_frames
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceResult, ModelState
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc
from visionrpc.wire.converters import (
    InferRequestConverter,
    InferResponseConverter,
    ModelInfoConverter,
)

if TYPE_CHECKING:  # prometheus-client and OpenTelemetry are imported only when they are on
    from visionrpc.runtime.pipeline import ModelLoad
    from visionrpc.server.metrics import InferenceMeter, ServerMetrics
    from visionrpc.server.otel import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["InferenceMethods"].full_name

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _given(item: InferenceInput) -> Callable[[], InferenceInput]:
    """An input that needs no conversion, in the form ``InferenceServicer._run`` takes."""
    return lambda: item


class InferenceServicer(inference_pb2_grpc.InferenceMethodsServicer):
    """``visionrpc.v1.InferenceMethods`` over an :class:`InferencePipeline`."""

    name = SERVICE_NAME

    def __init__(self, settings: Settings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self._repository = repository
        self._pipeline: InferencePipeline | None = None
        self._control: ModelControl | None = None
        self._watch: asyncio.Task[None] | None = None
        self._draining = asyncio.Event()
        # Per client: Infer calls and InferStream frames in work (max_in_flight_per_client)
        self._in_flight = ClientSlots(settings.fairness.max_in_flight_per_client)
        self._meter: InferenceMeter | None = None
        self._tracing: Tracing | None = None
        self._frames: FrameHandler[pb.InferRequest, pb.InferResponse] = FrameHandler(
            request_type="InferRequest",
            span_name="InferStream frame",
            answer=self._infer,
            failed=lambda request, exc: pb.InferResponse(
                request_id=request.request_id, error=rich_status(exc)
            ),
            request_id=lambda response: response.request_id,
        )
        """How InferStream answers a frame: its error travels in the frame's ``error``."""

    def use_metrics(self, metrics: ServerMetrics) -> None:
        """Count this service's requests per model in ``metrics`` (before ``start``)."""
        self._meter = metrics.inference_meter()
        metrics.load_sources.append(self._model_load)
        metrics.client_sources.append(lambda: self._in_flight.clients)

    def _model_load(self) -> dict[str, ModelLoad]:
        pipeline = self._pipeline
        return {} if pipeline is None else pipeline.load()

    def trace_with(self, tracing: Tracing) -> None:
        """Add stage spans to each call and a span per stream frame (``server.tracing.Traced``)."""
        self._tracing = tracing

    # -- lifecycle (server.app.Service) --------------------------------------------------------

    @property
    def pipeline(self) -> InferencePipeline:
        if self._pipeline is None:
            raise NotReadyError("models are still loading; retry shortly")
        return self._pipeline

    @property
    def repository(self) -> ModelRepository:
        if self._pipeline is None or self._repository is None:
            raise NotReadyError("models are still loading; retry shortly")
        return self._repository

    @property
    def control(self) -> ModelControl:
        """Loads, reloads and unloads models while serving (the typed and the protocol's RPCs)."""
        if self._control is None:
            raise NotReadyError("models are still loading; retry shortly")
        return self._control

    def add_to_server(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceMethodsServicer_to_server(self, server)

    async def start(self) -> None:
        if self._repository is None:
            pipeline = await asyncio.to_thread(InferencePipeline.from_settings, self.settings)
            self._repository = pipeline.repository
        else:
            pipeline = InferencePipeline(self._repository, self.settings)
        repository = self._repository
        if self._meter is not None:
            self._meter.models_loaded(
                (repository.get(name) for name in repository.names), repository.default_name
            )
            pipeline.on_batch = self._meter.batch
        control = ModelControl(pipeline, self.settings.model_control)
        control.on_loaded.append(self._loaded)
        control.on_unloaded.append(self._unloaded)
        self._control = control
        self._pipeline = pipeline
        interval = self.settings.model_control.poll_interval_s
        if interval is not None:
            self._watch = asyncio.create_task(ModelWatch(control, interval).run())
        for info in self._repository.describe_all():
            log.info(
                "model %s v%s (%s, %dx%d, %s) ready%s",
                info.name,
                info.version,
                info.task.value,
                info.input_width,
                info.input_height,
                info.execution_provider,
                " [default]" if info.name == self._repository.default_name else "",
            )

    def drain(self) -> None:
        """Tell open InferStreams to finish (``server.drain.Drains``): each answers the frames it
        read and ends UNAVAILABLE; in-flight Infer calls run to their end."""
        self._draining.set()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._control is not None:
            await self._control.close()
        if self._pipeline is not None:
            await self._pipeline.close()

    def _loaded(self, model: LoadedModel, replaced: LoadedModel | None) -> None:
        if self._meter is not None:
            if replaced is not None:
                self._meter.model_unloaded(replaced)
            self._meter.models_loaded([model], self.repository.default_name)

    def _unloaded(self, model: LoadedModel) -> None:
        if self._meter is not None:
            self._meter.model_unloaded(model)

    # -- methods -------------------------------------------------------------------------------

    async def _infer(
        self, request: pb.InferRequest, deadline: Deadline, client: str
    ) -> pb.InferResponse:
        """One image; a request without a ``request_id`` gets one (echoed in the response)."""
        if not request.request_id:
            request.request_id = new_request_id()
        REQUEST_ID.set(request.request_id)  # for the access log and error lines of this task
        meter, tracing = self._meter, self._tracing
        if meter is None and tracing is None:
            item = InferRequestConverter.to_types(request)
            result = await self.pipeline.infer(item, deadline, client)
            return InferResponseConverter.from_types(result)
        result = await self._run(
            request.model, lambda: InferRequestConverter.to_types(request), deadline, client
        )
        return InferResponseConverter.from_types(result)

    async def _run(
        self,
        model: str,
        item: Callable[[], InferenceInput],
        deadline: Deadline,
        client: str,
    ) -> InferenceResult:
        """One input through the pipeline, counted in the meter and traced with stage spans.

        ``item`` is called inside the metered span, so a conversion error counts as a failure.
        """
        meter, tracing = self._meter, self._tracing
        started = meter.begin(model) if meter is not None else None
        started_ns = time.time_ns()
        try:
            result = await self.pipeline.infer(item(), deadline, client)
        except BaseException as exc:
            if meter is not None and started is not None:
                meter.failed(started, exc)
            raise
        if meter is not None and started is not None:
            meter.answered(started, result)
        if tracing is not None:
            tracing.add_stages(result, started_ns)
        return result

    async def infer_all(
        self, items: Sequence[InferenceInput], context: Context
    ) -> list[InferenceResult]:
        """Several inputs of one call (the Open Inference Protocol's ModelInfer), side by side.

        The call takes one of its client's in-flight slots, as an Infer call does; each input is
        counted in the metrics and traced like one Infer.
        """
        client = client_key(context)
        model = items[0].options.model if items else ""
        with self._slot(client, model):
            return await self.run_all(items, self._deadline(context), client)

    async def run_all(
        self, items: Sequence[InferenceInput], deadline: Deadline, client: str
    ) -> list[InferenceResult]:
        """Several inputs side by side, each counted and traced like one Infer, for a caller that
        holds the client's in-flight slot already (a stream frame)."""
        return list(
            await asyncio.gather(
                *(self._run(i.options.model, _given(i), deadline, client) for i in items)
            )
        )

    def serve_stream(
        self, frames: AsyncIterator[Req], context: Context, handler: FrameHandler[Req, Resp]
    ) -> AsyncIterator[Resp]:
        """Answer a bidirectional stream's frames with ``handler`` under this service's limits:
        ``stream_window``, the per-client in-flight slots, the drain (see ``server.streams``)."""
        return serve_frames(
            frames,
            handler,
            context=context,
            stream_deadline=self._deadline(context),
            client=client_key(context),
            limits=StreamLimits(
                self.settings.stream_window, self._in_flight, self._draining, self.settings.drain
            ),
            tracing=self._tracing,
        )

    async def infer_raw(self, model: str, batch: np.ndarray, context: Context) -> RawResult:
        """A raw-view call (the protocol's ModelInfer on ``NAME.raw``): the graph itself on
        ``batch``, in the model's batcher. It takes one of its client's in-flight slots, as an
        Infer call does."""
        client = client_key(context)
        with self._slot(client, model):
            return await self.run_raw(model, batch, self._deadline(context), client)

    async def run_raw(
        self, model: str, batch: np.ndarray, deadline: Deadline, client: str
    ) -> RawResult:
        """The graph on ``batch`` for a caller that holds the client's in-flight slot already,
        counted in the metrics as one request of ``len(batch)`` images."""
        meter = self._meter
        started = meter.begin(model) if meter is not None else None
        try:
            result = await self.pipeline.infer_raw(model, batch, deadline, client)
        except BaseException as exc:
            if meter is not None and started is not None:
                meter.failed(started, exc)
            raise
        if meter is not None and started is not None:
            meter.answered_tensors(started, len(batch))
        return result

    @staticmethod
    def _deadline(context: Context) -> Deadline:
        """The call's deadline for the runtime, marked cancelled when the call ends early."""
        deadline = Deadline.after(context.time_remaining())
        # grpc-stubs type the callback as its own DoneCallback class; any callable works
        context.add_done_callback(lambda _: deadline.cancel())  # type: ignore[arg-type]
        return deadline

    @contextlib.contextmanager
    def _slot(self, client: str, model: str) -> Iterator[None]:
        """One of ``client``'s in-flight slots for the length of a call, or its refusal (counted
        as a failed request of ``model``)."""
        if not self._in_flight.try_acquire(client):
            refusal = in_flight_refusal(self._in_flight.held(client), self._in_flight.limit)
            if self._meter is not None:
                self._meter.failed(self._meter.begin(model), refusal)
            raise refusal
        try:
            yield
        finally:
            self._in_flight.release(client)

    @map_errors
    async def Infer(self, request: pb.InferRequest, context: Context) -> pb.InferResponse:
        client = client_key(context)
        with self._slot(client, request.model):
            return await self._infer(request, self._deadline(context), client)

    async def InferStream(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: Context
    ) -> AsyncIterator[pb.InferResponse]:
        """Frames in, results out in order, at most ``stream_window`` frames in flight; a failed
        frame is answered with its ``error`` (the same ``google.rpc`` details a failed Infer call
        would carry) and the stream goes on. See ``server.streams`` for reading, back-pressure
        and the drain."""
        async for response in self.serve_stream(request_iterator, context, self._frames):
            yield response

    @map_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        repository = self.repository
        models = [ModelInfoConverter.from_types(d) for d in repository.describe_all()]
        if request.include_unavailable:  # the index lists the directory: off the event loop
            index = await asyncio.to_thread(repository.index)
            models += [
                ModelInfoConverter.from_status(s) for s in index if s.state is not ModelState.READY
            ]
            models.sort(key=lambda m: m.name)
        return pb.ListModelsResponse(models=models, default_model=repository.default_name)

    @map_errors
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        return ModelInfoConverter.from_types(self.repository.describe(request.name))

    # -- model control (scope "models") ---------------------------------------------------------

    @map_errors
    async def LoadModel(self, request: pb.LoadModelRequest, context: Context) -> pb.ModelInfo:
        model = await self.control.load(request.name)
        return ModelInfoConverter.from_types(model.describe())

    @map_errors
    async def ReloadModel(self, request: pb.ReloadModelRequest, context: Context) -> pb.ModelInfo:
        model = await self.control.reload(request.name)
        return ModelInfoConverter.from_types(model.describe())

    @map_errors
    async def UnloadModel(self, request: pb.UnloadModelRequest, context: Context) -> pb.ModelInfo:
        return ModelInfoConverter.from_status(await self.control.unload(request.name))
