"""The runtime's statistics (``runtime.statistics``) as the protocol's ModelStatistics message."""

from __future__ import annotations

from visionrpc.runtime.statistics import Duration, ModelStatistics
from visionrpc.v1 import grpc_service_pb2 as oip


def _duration(d: Duration) -> oip.StatisticDuration:
    return oip.StatisticDuration(count=d.count, ns=d.ns)


def to_message(stats: ModelStatistics) -> oip.ModelStatistics:
    return oip.ModelStatistics(
        name=stats.name,
        version=stats.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=oip.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            oip.InferBatchStatistics(
                batch_size=b.batch_size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for b in stats.batches
        ],
    )
