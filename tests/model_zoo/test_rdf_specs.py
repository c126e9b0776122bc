"""Model descriptions across spec versions, from QuPath's bioimage.io spec tests."""

from __future__ import annotations

import pytest

from model_zoo import cli

VALID = {
    "brightfield_bioio_v0_5/rdf.yaml": ("InstanSeg model", "input  raw: CYX"),
    "stardist_example_model/rdf.yaml": ("StardistExampleModel", "input  input: YXC"),
    "unet2d_keras_tf/rdf.yaml": ("Unet2DKeras", "input  input: XYC"),
    "unet2d_multi_tensor/rdf.yaml": ("multi-tensor", "input  input1: CYX"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_descriptions_are_described(shared_data, capsys, name) -> None:
    rdf = shared_data / "rdf_specs" / name
    assert cli.main(["models", "info", str(rdf)]) == 0
    out = capsys.readouterr().out
    title, axes_line = VALID[name]
    assert f"name:        {title}" in out
    assert axes_line in out
    assert "spec:        0.5" in out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unet2d_nuclei_broad/rdf_v0_3_0.yaml", "format '0.3.0'"),
        ("unet2d_nuclei_broad/rdf_v0_4_0.yaml", "weights.onnx.parent"),
        ("brightfield_multiout_v0_5/rdf.yaml", "cite.0.doi"),
    ],
)
def test_invalid_descriptions_say_what_is_wrong(shared_data, capsys, name, message):
    rdf = shared_data / "rdf_specs" / name
    assert cli.main(["models", "info", str(rdf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message in err[0]
