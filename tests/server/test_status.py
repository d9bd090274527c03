"""The domain error → status map."""

from __future__ import annotations

import grpc
import pytest

from visionrpc import errors
from visionrpc.server.status import INTERNAL_MESSAGE, map_errors, status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInputError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ResourceLimitError("bad"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelNotFoundError("bad"), grpc.StatusCode.NOT_FOUND),
        (errors.OutOfRangeError("bad"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.ModelLoadError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_domain_errors_keep_their_message(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, "bad")


def test_subclasses_inherit_the_code() -> None:
    class TooBig(errors.ResourceLimitError):
        pass

    assert status_for(TooBig("huge")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "huge")


def test_unexpected_errors_do_not_leak_details() -> None:
    assert status_for(KeyError("secret path")) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def test_map_errors_rejects_sync_functions() -> None:
    with pytest.raises(TypeError):
        map_errors(lambda request, context: None)
