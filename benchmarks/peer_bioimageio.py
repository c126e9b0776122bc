"""The peer: bioimageio.core's own ``predict`` with 512 blocks, as a whole process.

Usage: ``peer_bioimageio.py MODEL_DIR WEIGHTS IN.tif OUT.npy [DEVICE]``

The shared U-Net's RDF lists a ``pytorch_state_dict`` entry at an unreachable
address, so the description is loaded without IO checks; nothing else is changed.
Blocks are given as an explicit 512² input block shape, the one shape the fixed
512 ONNX graph accepts (its default parameterised blocking pads to 576 and fails).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tifffile
from bioimageio.core import predict
from bioimageio.core._prediction_pipeline import create_prediction_pipeline
from bioimageio.core.digest_spec import get_member_id
from bioimageio.spec import load_model_description


def main() -> None:
    model_dir, weights, source, target = sys.argv[1:5]
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    start = time.perf_counter()
    descr = load_model_description(
        f"{model_dir}/bioimageio.yaml", perform_io_checks=False
    )
    pipeline = create_prediction_pipeline(
        descr, weight_format=weights, devices=[device]
    )
    image = tifffile.imread(source).astype(np.float32)[np.newaxis, np.newaxis]
    member = get_member_id(descr.inputs[0])
    block = 512
    sample = predict(
        model=pipeline,
        inputs={member: image},
        input_block_shape={member: {"batch": 1, "channel": 1, "y": block, "x": block}},
    )
    out = next(iter(sample.members.values())).data.to_numpy()
    np.save(target, out.reshape(out.shape[-2:]))
    sys.stderr.write(f"peer {weights}: {time.perf_counter() - start:.2f} s\n")


if __name__ == "__main__":
    main()
