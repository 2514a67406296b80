"""`xaibench import-maps`: maps from elsewhere become a store that evaluate scores like xaibench's
own; problems are reported per file and nothing stored is lost."""

from pathlib import Path, PurePosixPath

import h5py
import numpy as np
import pandas as pd
import pytest
from tiny_run import MODEL, STEP

from xaibench.core.errors import ConfigError, DataError
from xaibench.store import open_store

METHOD = "gradcam-elsewhere"


def original(tiny_run) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The ids, maps, targets and scores of the tiny run's Grad-CAM store."""
    with open_store(tiny_run.store("gradcam")) as store:
        maps = store.read_maps(np.arange(len(store)))
        return store.ids, maps, store.targets.copy(), store.scores.copy()


def npy_folder(root: Path, ids, maps, flat: bool = False) -> Path:
    for image_id, m in zip(ids, maps, strict=True):
        name = (
            PurePosixPath(image_id).stem if flat else str(PurePosixPath(image_id).with_suffix(""))
        )
        path = root / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, m[None] if flat else m)  # (1, h, w) is a map too
    return root


def write_npz(path: Path, ids, maps) -> Path:
    np.savez(path, **{PurePosixPath(i).name: m for i, m in zip(ids, maps, strict=True)})
    return path


def write_h5(path: Path, ids, maps, named: bool = True) -> Path:
    order = np.arange(len(ids))[::-1] if named else np.arange(len(ids))
    with h5py.File(path, "w") as f:
        f["attributions"] = maps[order]
        if named:
            f["ids"] = np.array([ids[i] for i in order], dtype=h5py.string_dtype())
    return path


def import_args(source, tiny_run, out, *extra):
    return ["import-maps", source, "--method", METHOD, "--model", MODEL, "--data", tiny_run.data,
            "--out", out, "--batch-size", 4, "--quiet", *extra]  # fmt: skip


def imported_store(out: Path) -> Path:
    return out / MODEL.replace(":", "_") / f"{METHOD}.h5"


@pytest.mark.parametrize("kind", ["npy", "npy-flat", "npz", "h5", "h5-in-order"])
def test_imported_maps_are_stored_with_the_class_and_score_of_each_image(
    tiny_run, invoke, tmp_path, kind
):
    ids, maps, targets, scores = original(tiny_run)
    source = {
        "npy": lambda: npy_folder(tmp_path / "maps", ids, maps),
        "npy-flat": lambda: npy_folder(tmp_path / "maps", ids, maps, flat=True),
        "npz": lambda: write_npz(tmp_path / "maps.npz", ids, maps),
        "h5": lambda: write_h5(tmp_path / "maps.h5", ids, maps),
        "h5-in-order": lambda: write_h5(tmp_path / "maps.h5", ids, maps, named=False),
    }[kind]()
    result = invoke(*import_args(source, tiny_run, tmp_path / "runs"))
    assert f"{len(ids)} maps imported" in result.output
    with open_store(imported_store(tmp_path / "runs")) as store:
        assert store.complete and store.ids == ids
        np.testing.assert_array_equal(store.read_maps(np.arange(len(ids))), maps)
        np.testing.assert_array_equal(store.targets, targets)  # the predicted classes
        np.testing.assert_allclose(store.scores, scores, rtol=1e-5)
        assert store.meta.method == METHOD and store.meta.model == MODEL
        assert store.meta.method_params["imported_from"] == str(source.resolve())
        assert np.isnan(store.seconds).all()  # not measured here


def test_evaluate_scores_imported_maps_as_it_scores_its_own(tiny_run, invoke, tmp_path):
    ids, maps, _, _ = original(tiny_run)
    invoke(*import_args(write_npz(tmp_path / "maps.npz", ids, maps), tiny_run, tmp_path / "runs"))
    store = imported_store(tmp_path / "runs")
    invoke("evaluate", "--model", MODEL, "--store", store, "--data", tiny_run.data,
           "--protocol", "polycam", "--step", STEP, "--batch-size", 4, "--quiet")  # fmt: skip
    ours = pd.read_csv(store.parent / "metrics" / f"{METHOD}-polycam(step={STEP}).per_image.csv")
    theirs = tiny_run.per_image("gradcam", "polycam")
    for metric in ("insertion", "deletion", "ins_del", "avg_drop", "increase"):
        np.testing.assert_allclose(ours[metric], theirs[metric], rtol=1e-6, err_msg=metric)
    assert set(ours["method"]) == {METHOD}


def test_bad_maps_are_listed_per_file_and_the_good_ones_kept(tiny_run, invoke, tmp_path):
    ids, maps, _, _ = original(tiny_run)
    folder = npy_folder(tmp_path / "maps", ids, maps)
    first, second, third = (folder / f"{PurePosixPath(i).with_suffix('')}.npy" for i in ids[:3])
    np.save(second, np.zeros((5, 5), np.float32))  # another shape
    broken = maps[2].copy()
    broken[0, 0] = np.nan
    np.save(third, broken)
    first.unlink()
    out = tmp_path / "runs"
    with pytest.raises(DataError) as failure:
        invoke(*import_args(folder, tiny_run, out))
    message = str(failure.value)
    assert f"3 map(s) of {folder} not imported (3 imported" in message
    assert f"{ids[0]}: no map" in message
    assert f"{second}: shape (5, 5), but the store's maps are {maps.shape[1:]}" in message
    assert f"{third}: 1 NaN or infinite value(s)" in message
    with open_store(imported_store(out)) as store:
        assert store.done.tolist() == [False] * 3 + [True] * 3  # kept

    np.save(first, maps[0])
    np.save(second, maps[1])
    np.save(third, maps[2])
    result = invoke(*import_args(folder, tiny_run, out))
    assert "3 maps imported" in result.output  # only the ones missing
    with open_store(imported_store(out)) as store:
        assert store.complete
        np.testing.assert_array_equal(store.read_maps(np.arange(len(ids))), maps)


def test_with_skip_bad_the_images_without_a_usable_map_are_recorded_without_one(
    tiny_run, invoke, tmp_path
):
    ids, maps, targets, _ = original(tiny_run)
    folder = npy_folder(tmp_path / "maps", ids, maps)
    (folder / f"{PurePosixPath(ids[4]).with_suffix('')}.npy").unlink()
    result = invoke(*import_args(folder, tiny_run, tmp_path / "runs", "--skip-bad"))
    assert f"not imported: {ids[4]}: no map" in result.output
    assert "1 image(s) recorded without a map" in result.output
    with open_store(imported_store(tmp_path / "runs")) as store:
        assert store.complete and store.targets[4] == -1 and np.isnan(store.read_maps([4])).all()
        np.testing.assert_array_equal(np.delete(store.targets, 4), np.delete(targets, 4))


def test_bad_requests_are_refused_naming_the_fix(tiny_run, invoke, tmp_path):
    ids, maps, _, _ = original(tiny_run)
    source = write_npz(tmp_path / "maps.npz", ids, maps)
    args = import_args(source, tiny_run, tmp_path / "runs")
    with pytest.raises(ConfigError, match="'gradcam' is xaibench's own method"):
        invoke(*[("gradcam" if a == METHOD else a) for a in args])
    with pytest.raises(ConfigError, match="letters, digits"):
        invoke(*[("../x" if a == METHOD else a) for a in args])
    with pytest.raises(DataError, match="rows and no `h5_ids` names them"):
        short = write_h5(tmp_path / "short.h5", ids[:4], maps[:4], named=False)
        invoke(*import_args(short, tiny_run, tmp_path / "runs"))
    with pytest.raises(DataError, match="has no dataset 'names'"):
        invoke(*import_args(write_h5(tmp_path / "m.h5", ids, maps), tiny_run, tmp_path / "runs",
                            "--h5-ids", "names"))  # fmt: skip
    (tmp_path / "maps.txt").write_text("no")
    with pytest.raises(
        DataError, match=r"give a folder of \.npy files, an \.npz archive or an \.h5"
    ):
        invoke(*import_args(tmp_path / "maps.txt", tiny_run, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
