"""Run by test_oip_tritonclient.py with an interpreter that has tritonclient[grpc] (its own venv:
tritonclient pins its own protobuf). Calls the server the way a Triton user would and prints what
it saw as JSON. Imports nothing from visionrpc.

    python oip_tritonclient_probe.py ADDRESS MODEL IMAGE CONFIDENCE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton  # type: ignore[import-not-found]
from tritonclient.utils import InferenceServerException  # type: ignore[import-not-found]


def main() -> None:
    address, model, image_path, confidence = sys.argv[1:5]
    client = triton.InferenceServerClient(address)
    image = Path(image_path).read_bytes()
    seen: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("nope"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
    }
    images = triton.InferInput("IMAGE", [2], "BYTES")
    images.set_data_from_numpy(np.array([image, image], dtype=np.object_))
    result = client.infer(model, [images], parameters={"confidence": float(confidence)})
    seen["outputs"] = {
        name: result.as_numpy(name).tolist()
        for name in ("BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX")
    }
    wrong = triton.InferInput("IMAGE", [3], "UINT8")
    wrong.set_data_from_numpy(np.zeros(3, np.uint8))
    try:
        client.infer(model, [wrong])
        seen["wrong_datatype"] = None
    except InferenceServerException as exc:
        seen["wrong_datatype"] = [exc.status(), exc.message()]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
