"""Run by test_oip_tritonclient_control.py with an interpreter that has tritonclient[grpc]:
model control the way a Triton user does it (index, unload, load with and without a config
override, reload after editing the model's files). Prints what it saw as JSON; imports nothing
from visionrpc.

    python oip_tritonclient_control_probe.py ADDRESS MODEL MODEL_YAML
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tritonclient.grpc as triton  # type: ignore[import-not-found]
from tritonclient.utils import InferenceServerException  # type: ignore[import-not-found]


def failure(call: object) -> list[str] | None:
    try:
        call()  # type: ignore[operator]
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    return None


def main() -> None:
    address, model, model_yaml = sys.argv[1:4]
    client = triton.InferenceServerClient(address)
    seen: dict[str, object] = {"index": client.get_model_repository_index(as_json=True)}

    client.unload_model(model)
    seen["ready_after_unload"] = client.is_model_ready(model)
    seen["index_after_unload"] = client.get_model_repository_index(as_json=True)
    seen["metadata_after_unload"] = failure(lambda: client.get_model_metadata(model))

    seen["load_with_config"] = failure(lambda: client.load_model(model, config='{"x": 1}'))
    Path(model_yaml).write_text('version: "2"\n', encoding="utf-8")
    client.load_model(model)
    seen["ready_v2"] = client.is_model_ready(model, "2")
    seen["ready_v1"] = client.is_model_ready(model, "1")
    seen["metadata_versions"] = client.get_model_metadata(model, as_json=True)["versions"]

    Path(model_yaml).write_text('version: "3"\n', encoding="utf-8")
    client.load_model(model)  # loaded already: a reload
    seen["versions_after_reload"] = client.get_model_metadata(model, as_json=True)["versions"]
    seen["ready_index"] = client.get_model_repository_index(as_json=True)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
