"""The protocol's model_repository extension: the index, and what load and unload requests carry.

Each model of the directory appears twice in the index, as its vision view ``NAME`` and its raw
view ``NAME.raw``: both are views of one loaded model, so they share its version and state, and
loading or unloading either name loads or unloads that model. Triton's states are strings; the
runtime's (READY, LOADING, UNAVAILABLE) are a subset of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from visionrpc.errors import InvalidInputError
from visionrpc.server.oip.naming import RAW_SUFFIX, parse_view
from visionrpc.types import ModelState, ModelStatus
from visionrpc.v1 import grpc_service_pb2 as oip

UNLOAD_PARAMETERS = ("unload_dependents",)
"""Unload parameters accepted: tritonclient always sends ``unload_dependents``, and no visionrpc
model has dependents, so it changes nothing."""


def index(statuses: Iterable[ModelStatus], *, ready_only: bool) -> oip.RepositoryIndexResponse:
    """The RepositoryIndex answer: both views of every model, by name."""
    response = oip.RepositoryIndexResponse()
    for status in statuses:
        if status.name.endswith(RAW_SUFFIX):  # a refused file: its name means another's view
            continue
        if ready_only and status.state is not ModelState.READY:
            continue
        for name in (status.name, status.name + RAW_SUFFIX):
            response.models.add(
                name=name, version=status.version, state=status.state.value, reason=status.reason
            )
    response.models.sort(key=lambda m: m.name)
    return response


def model_name(name: str) -> str:
    """The repository's model a load or unload request names (``NAME.raw`` is ``NAME``)."""
    if not name:
        raise InvalidInputError(
            "model_name is empty; send the name of a model of the repository", field="model_name"
        )
    return parse_view(name).model


def check_repository(name: str, directory: Path) -> None:
    """visionrpc has one repository: "" or its directory (by name or path) selects it."""
    if name and name not in (directory.name, str(directory)):
        raise InvalidInputError(
            f"repository_name {name!r} is not this server's repository; send an empty "
            f"repository_name or {directory.name!r}",
            field="repository_name",
        )


def check_load_parameters(parameters: Mapping[str, oip.ModelRepositoryParameter]) -> None:
    """Refuse every load parameter: visionrpc loads what the models directory holds."""
    if not parameters:
        return
    names = ", ".join(sorted(parameters))
    raise InvalidInputError(
        f"RepositoryModelLoad parameter(s) {names} are not supported: visionrpc loads the model "
        "from its models directory (model.onnx and model.yaml); it takes no 'config' override "
        "or 'file:' contents. Change the files there, then load the model with no parameters",
        field="parameters",
    )


def check_unload_parameters(parameters: Mapping[str, oip.ModelRepositoryParameter]) -> None:
    unknown = sorted(set(parameters) - set(UNLOAD_PARAMETERS))
    if unknown:
        raise InvalidInputError(
            f"RepositoryModelUnload parameter(s) {', '.join(unknown)} are not supported; it "
            f"takes {', '.join(UNLOAD_PARAMETERS)} (a bool_param)",
            field="parameters",
        )
    for key in UNLOAD_PARAMETERS:
        if key in parameters and parameters[key].WhichOneof("parameter_choice") != "bool_param":
            raise InvalidInputError(f"parameter {key!r} must be a bool_param", field="parameters")
