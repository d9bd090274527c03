"""Run by test_oip_raw_tritonclient.py with an interpreter that has tritonclient[grpc]. Talks to a
model's raw view exactly as Ultralytics' Triton client does (ultralytics/utils/triton.py,
TritonRemoteModel, which ``YOLO("grpc://HOST:PORT/NAME.raw")`` uses): the same calls, in the same
order, with the same conversions. Ultralytics itself needs torch, so the steps are repeated here
rather than imported. Imports nothing from visionrpc.

    python oip_ultralytics_probe.py ADDRESS MODEL INPUT.npy OUTPUTS.npz

Prints what the client read from the config as JSON and saves the outputs it got to OUTPUTS.npz.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as client  # type: ignore[import-not-found]


def main() -> None:
    url, endpoint, input_path, output_path = sys.argv[1:5]
    # TritonRemoteModel.__init__ (the gRPC branch)
    triton_client = client.InferenceServerClient(url=url, verbose=False, ssl=False)
    config = triton_client.get_model_config(endpoint, as_json=True)["config"]
    config["output"] = sorted(config["output"], key=lambda x: x.get("name"))
    type_map = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8}
    input_formats = [x["data_type"] for x in config["input"]]
    np_input_formats = [type_map[x] for x in input_formats]
    input_names = [x["name"] for x in config["input"]]
    output_names = [x["name"] for x in config["output"]]
    metadata = eval(config.get("parameters", {}).get("metadata", {}).get("string_value", "None"))

    # TritonRemoteModel.__call__
    inputs = [np.load(input_path)]
    infer_inputs = []
    input_format = inputs[0].dtype
    for i, x in enumerate(inputs):
        if x.dtype != np_input_formats[i]:
            x = x.astype(np_input_formats[i])
        infer_input = client.InferInput(
            input_names[i], [*x.shape], input_formats[i].replace("TYPE_", "")
        )
        infer_input.set_data_from_numpy(x)
        infer_inputs.append(infer_input)
    infer_outputs = [client.InferRequestedOutput(output_name) for output_name in output_names]
    outputs = triton_client.infer(model_name=endpoint, inputs=infer_inputs, outputs=infer_outputs)
    got = [outputs.as_numpy(output_name).astype(input_format) for output_name in output_names]

    np.savez(output_path, **dict(zip(output_names, got, strict=True)))
    print(
        json.dumps(
            {
                "input_names": input_names,
                "input_formats": input_formats,
                "output_names": output_names,
                "max_batch_size": config.get("max_batch_size", 0),
                "platform": config.get("platform"),
                "names": {str(k): v for k, v in metadata["names"].items()},
                "task": metadata["task"],
                "imgsz": metadata["imgsz"],
                "stride": metadata["stride"],
                "vision_config": triton_client.get_model_config(
                    endpoint.removesuffix(".raw"), as_json=True
                )["config"],
            }
        )
    )


if __name__ == "__main__":
    main()
