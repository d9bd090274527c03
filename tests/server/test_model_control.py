"""Model control on a real server: load, unload, reload through the typed API and the protocol.

The model directory is written in tmp_path: ``defects`` is a copy of the packaged model at
version "1"; a test edits its model.yaml (or breaks its .onnx) and asks for a reload. The key test
reloads while client threads send Infer and ModelInfer without pause, and counts every answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.helpers import StartServer, StartThreadedServer, make_settings
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from tests.server.test_metrics import scrape
from tests.server.test_oip import framed
from visionrpc.client import AsyncClient
from visionrpc.runtime.repository import packaged_models_dir
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.types import ModelState
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

JPEG = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
PACKAGED = packaged_models_dir() / "defects"
MODELS_TOKEN = "ops-token-with-models"
INFERENCE_TOKEN = "station-token-inference-only"


def write_version(folder: Path, version: str) -> None:
    (folder / "model.yaml").write_text(f'version: "{version}"\n', encoding="utf-8")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """``defects`` (the packaged model at version "1") and nothing else."""
    folder = tmp_path / "models" / "defects"
    folder.mkdir(parents=True)
    shutil.copyfile(PACKAGED / "model.onnx", folder / "model.onnx")
    write_version(folder, "1")
    return folder.parent


def server_settings(models_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "access_log": False,
        "models_dir": models_dir,
        "runtime": {"device": "cpu"},
        **overrides,
    }


@dataclass
class Stubs:
    typed: inference_pb2_grpc.InferenceMethodsAsyncStub
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub
    address: str


@pytest.fixture
async def stubs(start_server: StartServer, models_dir: Path) -> AsyncIterator[Stubs]:
    settings = server_settings(models_dir)
    running = await start_server(services(settings), **settings)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Stubs(
            inference_pb2_grpc.InferenceMethodsStub(channel),
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            running.address,
        )


def services(settings: dict[str, Any]) -> list[Any]:
    inference = InferenceServicer(make_settings(**settings))
    return [inference, OpenInferenceServicer(inference)]


def infer(model: str = "defects") -> pb.InferRequest:
    return pb.InferRequest(image_bytes=JPEG, model=model, confidence_threshold=LOW_CONF)


def model_infer(model: str = "defects") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(framed(JPEG))
    return request


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# -- the typed API ---------------------------------------------------------------------------------


async def test_unload_load_and_reload_through_the_typed_api(stubs: Stubs, models_dir: Path) -> None:
    typed = stubs.typed
    assert (await typed.Infer(infer())).model_version == "1"

    unloaded = await typed.UnloadModel(pb.UnloadModelRequest(name="defects"))
    assert unloaded.state == pb.MODEL_STATE_UNAVAILABLE
    assert (unloaded.version, unloaded.state_reason) == ("1", "unloaded by request")
    error = await rpc_error(typed.Infer(infer()))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'defects' is not loaded (unloaded by request); load it" in str(error.details())
    error = await rpc_error(typed.Infer(infer("")))  # the default model is unloaded too
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "the default model 'defects' is not loaded" in str(error.details())
    assert list((await typed.ListModels(pb.ListModelsRequest())).models) == []
    listed = await typed.ListModels(pb.ListModelsRequest(include_unavailable=True))
    assert [(m.name, m.state) for m in listed.models] == [("defects", pb.MODEL_STATE_UNAVAILABLE)]
    error = await rpc_error(typed.ReloadModel(pb.ReloadModelRequest(name="defects")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "nothing to reload; load it (LoadModel) instead" in str(error.details())

    loaded = await typed.LoadModel(pb.LoadModelRequest(name="defects"))
    assert (loaded.name, loaded.version, loaded.state) == ("defects", "1", pb.MODEL_STATE_READY)
    assert loaded.input_width == 320  # a full ModelInfo

    write_version(models_dir / "defects", "2")
    reloaded = await typed.ReloadModel(pb.ReloadModelRequest(name="defects"))
    assert (reloaded.version, reloaded.state, reloaded.state_reason) == (
        "2",
        pb.MODEL_STATE_READY,
        "",
    )
    assert (await typed.Infer(infer())).model_version == "2"
    assert (await typed.GetModelInfo(pb.GetModelInfoRequest(name="defects"))).version == "2"


async def test_a_failed_reload_keeps_the_old_version_serving(
    stubs: Stubs, models_dir: Path
) -> None:
    typed = stubs.typed
    onnx = models_dir / "defects" / "model.onnx"
    onnx.write_bytes(b"not an onnx file")
    write_version(models_dir / "defects", "2")
    error = await rpc_error(typed.ReloadModel(pb.ReloadModelRequest(name="defects")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"cannot load ONNX model {onnx}" in str(error.details())

    assert (await typed.Infer(infer())).model_version == "1"  # still serving version 1
    info = await typed.GetModelInfo(pb.GetModelInfoRequest(name="defects"))
    assert (info.version, info.state) == ("1", pb.MODEL_STATE_READY)
    assert info.state_reason.startswith("reload failed, version 1 still serving: ")
    assert str(onnx) in info.state_reason

    (models_dir / "defects" / "model.yaml").write_text("version: 2\nthreshold: 0.3\n", "utf-8")
    shutil.copyfile(PACKAGED / "model.onnx", onnx)
    error = await rpc_error(typed.LoadModel(pb.LoadModelRequest(name="defects")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.yaml: threshold: Extra inputs are not permitted" in str(error.details())
    assert (await typed.Infer(infer())).model_version == "1"


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("../defects", grpc.StatusCode.INVALID_ARGUMENT, "is not a model name"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "is not a model name"),
        ("defects.raw", grpc.StatusCode.INVALID_ARGUMENT, "names the raw view of model"),
        ("nope", grpc.StatusCode.NOT_FOUND, "has no model 'nope': put nope.onnx"),
    ],
)
async def test_load_of_a_bad_or_unknown_name_says_what_to_send(
    stubs: Stubs, name: str, code: grpc.StatusCode, message: str
) -> None:
    error = await rpc_error(stubs.typed.LoadModel(pb.LoadModelRequest(name=name)))
    assert error.code() == code
    assert message in str(error.details())
    assert (await stubs.typed.Infer(infer())).model_version == "1"


async def test_the_client_library_controls_models(stubs: Stubs, models_dir: Path) -> None:
    async with AsyncClient(stubs.address, timeout=60) as client:
        unloaded = await client.unload_model("defects")
        assert unloaded.state is ModelState.UNAVAILABLE
        models, _ = await client.list_models(include_unavailable=True)
        assert [(m.name, m.state, m.state_reason) for m in models] == [
            ("defects", ModelState.UNAVAILABLE, "unloaded by request")
        ]
        assert (await client.load_model("defects")).state is ModelState.READY
        write_version(models_dir / "defects", "2")
        assert (await client.reload_model("defects")).version == "2"
        assert (await client.infer(JPEG, model="defects")).model_version == "2"


async def test_metrics_follow_loads_and_unloads(
    start_server: StartServer, models_dir: Path
) -> None:
    settings = server_settings(models_dir, metrics={"port": 0})
    running = await start_server(services(settings), **settings)
    url = running.server.metrics_url
    async with AsyncClient(running.address, timeout=60) as client:
        assert "visionrpc_model_info{" in scrape(url).text and 'version="1"' in scrape(url).text
        write_version(models_dir / "defects", "2")
        await client.reload_model("defects")
        info = [line for line in scrape(url).text.splitlines() if "visionrpc_model_info{" in line]
        assert len(info) == 1 and 'version="2"' in info[0], info
        await client.unload_model("defects")
        info = [line for line in scrape(url).text.splitlines() if "visionrpc_model_info{" in line]
        assert info == []


# -- the Open Inference Protocol -------------------------------------------------------------------


def index_of(reply: oip.RepositoryIndexResponse) -> dict[str, tuple[str, str, str]]:
    return {m.name: (m.version, m.state, m.reason) for m in reply.models}


async def test_protocol_index_load_and_unload(stubs: Stubs, models_dir: Path) -> None:
    api = stubs.oip
    index = index_of(await api.RepositoryIndex(oip.RepositoryIndexRequest()))
    assert index == {"defects": ("1", "READY", ""), "defects.raw": ("1", "READY", "")}
    metadata = await api.ServerMetadata(oip.ServerMetadataRequest())
    assert "model_repository" in metadata.extensions

    await api.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="defects"))
    for name in ("defects", "defects.raw"):
        assert not (await api.ModelReady(oip.ModelReadyRequest(name=name))).ready
    index = index_of(await api.RepositoryIndex(oip.RepositoryIndexRequest()))
    assert index["defects"] == ("1", "UNAVAILABLE", "unloaded by request")
    assert index_of(await api.RepositoryIndex(oip.RepositoryIndexRequest(ready=True))) == {}
    error = await rpc_error(api.ModelInfer(model_infer()))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not loaded (unloaded by request)" in str(error.details())

    write_version(models_dir / "defects", "2")
    # NAME.raw names the same model: loading it loads defects
    await api.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="defects.raw"))
    assert (await api.ModelReady(oip.ModelReadyRequest(name="defects", version="2"))).ready
    assert not (await api.ModelReady(oip.ModelReadyRequest(name="defects", version="1"))).ready
    meta = await api.ModelMetadata(oip.ModelMetadataRequest(name="defects"))
    assert list(meta.versions) == ["2"]
    answer = await api.ModelInfer(model_infer())
    assert answer.model_version == "2"


async def test_protocol_reload_and_failed_load(stubs: Stubs, models_dir: Path) -> None:
    api = stubs.oip
    write_version(models_dir / "defects", "2")
    await api.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="defects"))
    assert (await api.ModelInfer(model_infer())).model_version == "2"

    (models_dir / "defects" / "model.onnx").write_bytes(b"broken")
    error = await rpc_error(
        api.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="defects"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.onnx" in str(error.details())
    index = index_of(await api.RepositoryIndex(oip.RepositoryIndexRequest()))
    version, state, reason = index["defects"]
    assert (version, state) == ("2", "READY")
    assert reason.startswith("reload failed, version 2 still serving: cannot load ONNX model")
    assert (await api.ModelInfer(model_infer())).model_version == "2"


async def test_protocol_refuses_what_it_does_not_support(stubs: Stubs) -> None:
    api = stubs.oip
    request = oip.RepositoryModelLoadRequest(model_name="defects")
    request.parameters["config"].string_param = '{"max_batch_size": 4}'
    request.parameters["file:1/model.onnx"].bytes_param = b"..."
    error = await rpc_error(api.RepositoryModelLoad(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter(s) config, file:1/model.onnx are not supported" in str(error.details())

    unload = oip.RepositoryModelUnloadRequest(model_name="defects")
    unload.parameters["force"].bool_param = True
    error = await rpc_error(api.RepositoryModelUnload(unload))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter(s) force are not supported; it takes unload_dependents" in str(
        error.details()
    )

    error = await rpc_error(
        api.RepositoryIndex(oip.RepositoryIndexRequest(repository_name="elsewhere"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send an empty repository_name or 'models'" in str(error.details())
    assert (await api.ModelReady(oip.ModelReadyRequest(name="defects"))).ready


async def test_grpcurl_commands_of_the_readme(stubs: Stubs) -> None:
    """The README's grpcurl lines, through reflection."""
    from tests.server.test_grpcurl import grpcurl, ok

    def call(method: str, body: str) -> Any:
        return json.loads(ok(grpcurl("-plaintext", "-d", body, stubs.address, method)))

    reloaded = await asyncio.to_thread(
        call, "visionrpc.v1.InferenceMethods/ReloadModel", '{"name": "defects"}'
    )
    assert (reloaded["name"], reloaded["version"], reloaded["state"]) == (
        "defects",
        "1",
        "MODEL_STATE_READY",
    )
    index = await asyncio.to_thread(call, "inference.GRPCInferenceService/RepositoryIndex", "{}")
    assert [m["name"] for m in index["models"]] == ["defects", "defects.raw"]
    await asyncio.to_thread(
        call, "inference.GRPCInferenceService/RepositoryModelUnload", '{"model_name": "defects"}'
    )
    listed = await asyncio.to_thread(
        call, "visionrpc.v1.InferenceMethods/ListModels", '{"include_unavailable": true}'
    )
    assert listed["models"] == [
        {
            "name": "defects",
            "version": "1",
            "state": "MODEL_STATE_UNAVAILABLE",
            "state_reason": "unloaded by request",
        }
    ]


# -- the scope -------------------------------------------------------------------------------------


@pytest.fixture
async def guarded(start_server: StartServer, models_dir: Path, tmp_path: Path) -> Stubs:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"""
- name: station
  sha256: {hashlib.sha256(INFERENCE_TOKEN.encode()).hexdigest()}
  scopes: [inference]
- name: ops
  token: {MODELS_TOKEN}
  scopes: [inference, models]
""",
        encoding="utf-8",
    )
    settings = server_settings(models_dir, auth={"tokens_file": tokens})
    running = await start_server(services(settings), **settings)
    channel = grpc.aio.insecure_channel(running.address)
    return Stubs(
        inference_pb2_grpc.InferenceMethodsStub(channel),
        grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
        running.address,
    )


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_model_control_needs_the_models_scope(guarded: Stubs) -> None:
    station, ops = bearer(INFERENCE_TOKEN), bearer(MODELS_TOKEN)
    calls: dict[str, Callable[[Any], Awaitable[object]]] = {
        "/visionrpc.v1.InferenceMethods/LoadModel": lambda md: guarded.typed.LoadModel(
            pb.LoadModelRequest(name="defects"), metadata=md
        ),
        "/visionrpc.v1.InferenceMethods/ReloadModel": lambda md: guarded.typed.ReloadModel(
            pb.ReloadModelRequest(name="defects"), metadata=md
        ),
        "/inference.GRPCInferenceService/RepositoryModelLoad": (
            lambda md: guarded.oip.RepositoryModelLoad(
                oip.RepositoryModelLoadRequest(model_name="defects"), metadata=md
            )
        ),
        "/visionrpc.v1.InferenceMethods/UnloadModel": lambda md: guarded.typed.UnloadModel(
            pb.UnloadModelRequest(name="defects"), metadata=md
        ),
        "/inference.GRPCInferenceService/RepositoryModelUnload": (
            lambda md: guarded.oip.RepositoryModelUnload(
                oip.RepositoryModelUnloadRequest(model_name="defects"), metadata=md
            )
        ),
    }
    for method, call in calls.items():
        error = await rpc_error(call(station))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == (
            f"{method} needs the scope 'models'; the token of 'station' has inference: "
            "ask for a token with 'models'"
        )
    # the index is for readers: the inference scope lists it
    index = await guarded.oip.RepositoryIndex(oip.RepositoryIndexRequest(), metadata=station)
    assert {m.name for m in index.models} == {"defects", "defects.raw"}
    for call in calls.values():
        await call(ops)
    assert not (
        await guarded.oip.ModelReady(oip.ModelReadyRequest(name="defects"), metadata=ops)
    ).ready


# -- the watch -------------------------------------------------------------------------------------


async def test_the_watch_setting_loads_reloads_and_unloads(
    start_server: StartServer, models_dir: Path
) -> None:
    settings = server_settings(models_dir, model_control={"poll_interval_s": 0.05})
    running = await start_server(services(settings), **settings)
    async with AsyncClient(running.address, timeout=60) as client:

        async def versions() -> dict[str, str]:
            models, _ = await client.list_models()
            return {m.name: m.version for m in models}

        async def until(expected: dict[str, str]) -> None:
            deadline = time.monotonic() + 30
            while (current := await versions()) != expected:
                assert time.monotonic() < deadline, f"models {current}, expected {expected}"
                await asyncio.sleep(0.05)

        added = models_dir / "copy"
        shutil.copytree(models_dir / "defects", added)
        await until({"defects": "1", "copy": "1"})
        write_version(added, "7")
        await until({"defects": "1", "copy": "7"})
        shutil.rmtree(added)
        await until({"defects": "1"})


# -- zero downtime ---------------------------------------------------------------------------------

CLIENTS = 4
RELOADS = 3
MAX_REQUESTS = 5000  # per client thread: the loop is bounded in count...
WAIT_S = 60  # ...and each wait for answers in time


def test_reload_under_continuous_load_fails_no_request(
    start_threaded_server: StartThreadedServer, models_dir: Path
) -> None:
    """Client threads send Infer and ModelInfer without pause through three reloads (versions
    2, 3, 4): every request is answered, requests are answered while each reload loads, and every
    version answers some."""
    settings = server_settings(models_dir)
    running = start_threaded_server(services(settings), **settings)
    stop = threading.Event()
    answered: Counter[str] = Counter()  # per version
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with grpc.insecure_channel(running.address) as channel:
            typed = inference_pb2_grpc.InferenceMethodsStub(channel)
            api = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for i in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                try:
                    if (index + i) % 2:
                        version = typed.Infer(infer(), timeout=30).model_version
                    else:
                        version = api.ModelInfer(model_infer(), timeout=30).model_version
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                with lock:
                    answered[version] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()

    def wait_for_answers(version: int, more: int) -> None:
        """Until ``version`` answered ``more`` requests more than now (at most WAIT_S)."""
        key = str(version)
        target, give_up = answered[key] + more, time.monotonic() + WAIT_S
        while answered[key] < target:
            assert time.monotonic() < give_up and not failures, (dict(answered), failures[:3])
            time.sleep(0.01)

    reload_seconds: list[float] = []
    during_reloads = 0  # answers that came while a reload was loading the next version
    try:
        with grpc.insecure_channel(running.address) as channel:
            typed = inference_pb2_grpc.InferenceMethodsStub(channel)
            for version in range(2, 2 + RELOADS):
                wait_for_answers(version - 1, 20)  # the version serving now answers some
                write_version(models_dir / "defects", str(version))
                before = sum(answered.values())
                t0 = time.perf_counter()
                reply = typed.ReloadModel(pb.ReloadModelRequest(name="defects"), timeout=120)
                reload_seconds.append(time.perf_counter() - t0)
                during_reloads += sum(answered.values()) - before
                assert reply.version == str(version)
            wait_for_answers(1 + RELOADS, 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    total = sum(answered.values())
    print(  # the README's figures come from this line (pytest -s)
        f"\nreload under load: {total} requests answered ({during_reloads} while reloading), "
        f"{len(failures)} failed, per version {dict(sorted(answered.items()))}, reloads took "
        f"{', '.join(f'{s:.2f}' for s in reload_seconds)} s"
    )
    assert failures == []
    assert during_reloads > 0  # the server kept answering while it loaded new versions
    assert set(answered) == {str(v) for v in range(1, 2 + RELOADS)}
    assert all(answered[str(v)] > 0 for v in range(1, 2 + RELOADS))
