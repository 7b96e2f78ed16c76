"""Driven by the tests with copick 1.31's own venv (not collected by pytest).

    make STATIC OVERLAY    a small project: static run data, and overlay picks (one clashing)
    use CONFIG             open CONFIG (the mount's), list everything, read the tomogram,
                           write new picks, a mesh and a segmentation; print JSON
    picks CONFIG           every run's picks: user, session, object and points (location,
                           transform, score, instance) as JSON
    use_tomograms CONFIG   the tomogram types copick lists in TS_001 at 10 Å, as JSON
    tomogram CONFIG TYPE   the TS_001 tomogram TYPE at 10 Å as copick reads it: its levels'
                           shapes and voxel size, and how far each coarser level is from
                           copick's own pyramid of its level 0 (`volume_pyramid`)
    export URI OUT CONFIG [OUT CONFIG...]   what `copick export` writes, in one process: for
                           each CONFIG, the wbp tomogram and curator's membrane as MRC
                           (OUT/mrc/...) and the picks URI in every picks format at 10 Å
                           (OUT/<format>/...)
"""
import json
import sys

import numpy as np

OBJECTS = [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 60},
           {"name": "proteasome", "is_particle": True, "label": 2, "radius": 50},
           {"name": "membrane", "is_particle": False, "label": 3}]


def config(path, overlay, static=None):
    cfg = {"config_type": "filesystem", "name": "test", "pickable_objects": OBJECTS,
           "overlay_root": f"local://{overlay}", "overlay_fs_args": {"auto_mkdir": True}}
    if static:
        cfg.update(static_root=f"local://{static}", static_fs_args={"auto_mkdir": False})
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    return path


def points(n):
    from copick.models import CopickPoint, CopickLocation
    return [CopickPoint(location=CopickLocation(x=10.0 * i, y=20.0, z=30.0)) for i in range(n)]


def make(static, overlay):
    import copick
    root = copick.from_file(config(f"{static}/../static_only.json", static))
    run = root.new_run("TS_001")
    vs = run.new_voxel_spacing(10.0)
    tomo = vs.new_tomogram("wbp")
    tomo.from_numpy(np.arange(32 ** 3, dtype=np.float32).reshape(32, 32, 32), levels=1)
    import zarr
    features = zarr.group(tomo.new_features("sobel").zarr(), overwrite=True)
    features.create_dataset("0", data=np.ones((4, 32, 32, 32), np.float32), chunks=(4, 16, 16, 16))
    picks = run.new_picks("ribosome", "1", user_id="curator")
    picks.points = points(2)
    picks.store()
    run.new_segmentation(10.0, "membrane", "1", False, user_id="curator").from_numpy(
        (np.arange(32 ** 3).reshape(32, 32, 32) % 2).astype(np.uint8))
    root2 = copick.from_file(config(f"{overlay}/../overlay_only.json", overlay))
    run2 = root2.new_run("TS_001", exist_ok=True) if "exist_ok" in root2.new_run.__code__.co_varnames \
        else root2.new_run("TS_001")
    clash = run2.new_picks("ribosome", "1", user_id="curator")
    clash.points = points(3)
    clash.store()
    print("made")


def use(path):
    import copick
    import trimesh
    root = copick.from_file(path)
    out = {"runs": [r.name for r in root.runs]}
    run = root.get_run("TS_001")
    out["voxel_spacings"] = [vs.voxel_size for vs in run.voxel_spacings]
    vs = run.get_voxel_spacing(10.0)
    out["tomograms"] = [t.tomo_type for t in vs.tomograms]
    tomo = vs.get_tomogram("wbp")
    out["tomogram_sum"] = float(np.asarray(tomo.numpy()).sum())
    out["features"] = [f.feature_type for f in tomo.features]
    out["picks"] = sorted((p.user_id, p.session_id, p.pickable_object_name, len(p.points)) for p in run.picks)
    out["segmentations"] = sorted((s.user_id, s.name) for s in run.segmentations)
    new = run.new_picks("proteasome", "7", user_id="annotator")
    new.points = points(4)
    new.store()
    mesh = run.new_mesh("membrane", "7", user_id="annotator")
    mesh.mesh = trimesh.creation.icosphere(subdivisions=1)
    mesh.store()
    run.new_segmentation(10.0, "membrane", "7", False, user_id="annotator").from_numpy(
        np.ones((32, 32, 32), np.uint8))
    again = copick.from_file(path).get_run("TS_001")
    out["after"] = {"picks": sorted((p.user_id, p.session_id, p.pickable_object_name, len(p.points))
                                    for p in again.picks),
                    "meshes": sorted((m.user_id, m.session_id) for m in again.meshes),
                    "segmentations": sorted((s.user_id, s.session_id, s.name) for s in again.segmentations)}
    print(json.dumps(out))


def export(picks_uri, *outs_and_configs):
    from copick.ops.export import export as copick_export
    for out, path in zip(outs_and_configs[::2], outs_and_configs[1::2]):
        copick_export(path, f"{out}/mrc", tomogram_uri="wbp@10.0", output_format="mrc", n_workers=1)
        copick_export(path, f"{out}/mrc", segmentation_uri="membrane:curator/1@10.0", output_format="mrc",
                      n_workers=1)
        for fmt in ("star", "dynamo", "em", "csv"):
            copick_export(path, f"{out}/{fmt}", picks_uri=picks_uri, output_format=fmt, voxel_spacing=10.0,
                          n_workers=1)
    print("exported")


def picks(path):
    import copick
    root = copick.from_file(path)
    out = []
    for run in root.runs:
        for p in run.picks:
            points, transforms = p.numpy()
            out.append({"run": run.name, "user": p.user_id, "session": p.session_id, "object": p.pickable_object_name,
                        "points": points.tolist(), "transforms": transforms.tolist(), "scores": p.scores().tolist(),
                        "instance_ids": p.instance_ids().tolist()})
    print(json.dumps(out))


def use_tomograms(path):
    import copick
    run = copick.from_file(path).get_run("TS_001")
    spacing = run.get_voxel_spacing(10.0) if run is not None else None
    print(json.dumps(sorted(t.tomo_type for t in spacing.tomograms) if spacing is not None else []))


def tomogram(path, tomo_type):
    import copick
    import zarr
    from copick.util.ome import volume_pyramid
    tomo = copick.from_file(path).get_run("TS_001").get_voxel_spacing(10.0).get_tomogram(tomo_type)
    group = zarr.open(tomo.zarr(), mode="r")
    levels = [np.asarray(group[str(i)]) for i in range(3)]
    ours = volume_pyramid(levels[0], 10.0, 3)
    print(json.dumps({"shapes": [list(a.shape) for a in levels], "dtype": str(levels[0].dtype),
                      "level0": levels[0].ravel().tolist(),
                      "pyramid_error": [float(np.abs(a - b).max()) for a, b in zip(levels, ours.values())]}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "use_tomograms":
        use_tomograms(sys.argv[2])
    elif sys.argv[1] == "tomogram":
        tomogram(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "picks":
        picks(sys.argv[2])
    elif sys.argv[1] == "export":
        export(*sys.argv[2:])
    else:
        use(sys.argv[2])
