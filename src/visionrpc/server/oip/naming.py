"""How the protocol names a model's two views.

``NAME`` is the vision view (encoded images in, detection tensors out); ``NAME.raw`` is the raw
view of the same loaded model (the ONNX graph's own tensors). The repository refuses model names
that end in the suffix, so a name always says which view it means.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionrpc.runtime.repository import RAW_SUFFIX

__all__ = ["RAW_SUFFIX", "ViewName", "parse_view"]


@dataclass(frozen=True)
class ViewName:
    """A protocol model name split into the repository's model and the view it asks for."""

    model: str
    raw: bool

    @property
    def protocol_name(self) -> str:
        return self.model + RAW_SUFFIX if self.raw else self.model


def parse_view(name: str) -> ViewName:
    """``defects`` -> the vision view of defects; ``defects.raw`` -> its raw view."""
    if name.endswith(RAW_SUFFIX) and len(name) > len(RAW_SUFFIX):
        return ViewName(name[: -len(RAW_SUFFIX)], raw=True)
    return ViewName(name, raw=False)
