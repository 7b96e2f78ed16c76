"""Upstream copick 1.31 (its own venv, zarr 2) on the merged mount: it lists and reads
the project with the overlay winning, and what it writes lands in the overlay only."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from test_overlay import tree_digest
from upstream import run_upstream

pytestmark = pytest.mark.upstream


def test_copick_reads_and_writes_through_the_mount(tmp_path, mount):
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    static.mkdir()
    overlay.mkdir()
    run_upstream("copick", "upstream_copick.py", "make", str(static), str(overlay))
    project = tmp_path / "project.json"
    project.write_text(json.dumps({"config_type": "filesystem", "name": "test",
                                   "pickable_objects": json.loads((tmp_path / "static_only.json").read_text())
                                   ["pickable_objects"],
                                   "static_root": f"local://{static}", "overlay_root": f"local://{overlay}"}))
    before = tree_digest(static)
    mnt = mount(project)
    out = json.loads(run_upstream("copick", "upstream_copick.py", "use", str(mnt / "copick_config.json"))
                     .strip().splitlines()[-1])
    assert out["runs"] == ["TS_001"] and out["voxel_spacings"] == [10.0] and out["tomograms"] == ["wbp"]
    assert out["tomogram_sum"] == float(sum(range(32 ** 3)))
    assert out["features"] == ["sobel"]
    # the clashing picks show once, with the overlay's 3 points
    assert out["picks"] == [["curator", "1", "ribosome", 3]]
    assert out["segmentations"] == [["curator", "membrane"]]
    assert ["annotator", "7", "proteasome", 4] in out["after"]["picks"]
    assert out["after"]["meshes"] == [["annotator", "7"]]
    assert ["annotator", "7", "membrane"] in out["after"]["segmentations"]
    # everything new is in the overlay; the static root did not change
    picks = overlay / "ExperimentRuns" / "TS_001" / "Picks"
    assert (picks / "annotator_7_proteasome.json").exists()
    assert (overlay / "ExperimentRuns" / "TS_001" / "Meshes" / "annotator_7_membrane.glb").exists()
    assert list((overlay / "ExperimentRuns" / "TS_001" / "Segmentations").glob("10.000_annotator_7_membrane.zarr"))
    assert tree_digest(static) == before
    # derived read-only views, which copick (above) listed past without noticing
    run = mnt / "ExperimentRuns" / "TS_001"
    rows = list(csv.DictReader(io.StringIO((run / "Picks" / "curator_1_ribosome.csv").read_text())))
    assert len(rows) == 3 and float(rows[2]["x"]) == 20.0 and rows[0]["m33"] == "1.0"
    for fmt in ("ply", "obj", "stl"):
        mesh = trimesh.load(run / "Meshes" / f"annotator_7_membrane.{fmt}", force="mesh")
        assert len(mesh.vertices) == 42, fmt              # an icosphere with one subdivision
    preview = np.asarray(Image.open(run / "VoxelSpacing10.000" / "wbp.png"))
    assert preview.shape == (32, 3 * 32 + 3 * 4) and preview.max() > 200
    with pytest.raises(OSError):
        (run / "Picks" / "curator_1_ribosome.csv").write_text("x")
