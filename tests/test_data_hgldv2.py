"""H-GLDv2 loader (``rankax.data.gldv2``) on generated files in the official layout.

``write_hgldv2`` writes GLDv2's list files (``train_clean.csv`` with space-separated image ids
per landmark, ``index_image_to_landmark.csv``, ``retrieval_solution_v2.1.csv``) and SupRank's
``*_label_to_subcategory_with_clusters.csv``, with solid-colour images in the ``a/b/c/<id>.jpg``
tree. Landmark 13 has no cluster and landmark 14 is absent from the hierarchy file: both are
dropped, as the official loader's ``remove_nan`` does.
"""

import numpy as np
import pytest

from rankax import data
from rankax.data.gldv2 import load_hgldv2
from rankax.data.tfds_data import DatasetNotPreparedError

# landmark -> (cluster, overall cluster); 13: no cluster (empty cell); 14: not listed.
TRAIN_HIER = {10: ("c_b", "o_x"), 11: ("c_a", "o_x"), 12: ("c_b", "o_x"), 13: ("", "")}
TRAIN = {10: ["aaa0", "aab1"], 11: ["abc2", "abd3", "abe4"], 12: ["bcd5", "bce6"], 13: ["ccc7"], 14: ["ddd8"]}
INDEX_HIER = {20: ("k1", "z"), 21: ("k2", "z"), 22: ("", "")}
INDEX = {"ii00": 20, "ii01": 20, "ij02": 21, "ik03": 22}
QUERIES = {"qq00": "ii01 ii00", "qq01": "ij02", "qq02": "None", "qq03": "ik03"}


def _colour(i):
    return (i * 37 % 256, i * 91 % 256, (i * 53 + 7) % 256)


def _image(path, k):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), _colour(k)).save(path, format="JPEG", quality=100)


def _tree(root, folder, image_id):
    return root / folder / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def write_hgldv2(root):
    """A tiny H-GLDv2 folder; image k (in file order over train, index, test) has colour k."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    lines = ["landmark_id,images"]
    for lm, ids in TRAIN.items():
        lines.append(f"{lm},{' '.join(ids)}")
        for i in ids:
            _image(_tree(root, "images/train", i), k)
            k += 1
    (root / "train_clean.csv").write_text("\n".join(lines) + "\n")
    for name, hier in (("train", TRAIN_HIER), ("index", INDEX_HIER)):
        rows = ["landmark_id,category,supercategory,cluster,overall_cluster"]
        rows += [f"{lm},x,y,{c},{o}" for lm, (c, o) in hier.items()]
        (root / f"{name}_label_to_subcategory_with_clusters.csv").write_text("\n".join(rows) + "\n")
    (root / "index_image_to_landmark.csv").write_text(
        "id,landmark_id\n" + "".join(f"{i},{lm}\n" for i, lm in INDEX.items())
    )
    for i in INDEX:
        _image(_tree(root, "index", i), k)
        k += 1
    (root / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n" + "".join(f"{q},{imgs},Private\n" for q, imgs in QUERIES.items())
    )
    for q in QUERIES:
        _image(_tree(root, "test", q), k)
        k += 1


def _centre(source, n):
    return source.get_pixels(np.arange(n), train=False)[:, 4, 4].astype(int)


def test_hgldv2_labels_drop_unclustered_landmarks(tmp_path):
    write_hgldv2(tmp_path)
    # Landmark 14's one image (of 9): its id is not in the hierarchy file, so the loader says so.
    with pytest.warns(UserWarning, match=r"^1 of the 9 images of train_clean\.csv are dropped: .*"
                      r"train_label_to_subcategory_with_clusters\.csv does not list their 1 landmark "
                      r"id\(s\) \(14\)"):
        ds = data.load_dataset({"name": "hgldv2", "root": str(tmp_path)})
    assert ds.name == "hgldv2"
    # Train: landmarks 10, 11, 12 kept (13: empty cluster; 14: not in the hierarchy file).
    # Ids in increasing raw order: landmark 10->0, 11->1, 12->2; cluster c_a->0, c_b->1; one overall.
    want = [[0, 1, 0]] * 2 + [[1, 0, 0]] * 3 + [[2, 1, 0]] * 2
    np.testing.assert_array_equal(np.asarray(ds.train.labels), want)
    # Images in file order, colours 0..6 (JPEG: within a few levels).
    assert np.abs(_centre(ds.train, 7) - np.array([_colour(k) for k in range(7)])).max() <= 3
    # Index: ik03 (landmark 22, no cluster) dropped. Queries: qq02 (None) and qq03 (landmark 22)
    # dropped; qq00's landmark is that of its first relevant image ii01 (20), qq01's is 21.
    np.testing.assert_array_equal(np.asarray(ds.gallery.labels), [[0, 0, 0], [0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(ds.test.labels), [[0, 0, 0], [1, 1, 0]])
    assert np.abs(_centre(ds.test, 2) - np.array([_colour(13), _colour(14)])).max() <= 3


@pytest.mark.filterwarnings("ignore:1 of the 9 images")  # landmark 14: tested above
def test_hgldv2_missing_files_say_how_to_prepare(tmp_path):
    with pytest.raises(
        DatasetNotPreparedError, match=r"train_clean\.csv.*google-landmark.*config\.dataset\.root"
    ):
        load_hgldv2(str(tmp_path))
    write_hgldv2(tmp_path)
    (tmp_path / "index_label_to_subcategory_with_clusters.csv").unlink()
    with pytest.raises(DatasetNotPreparedError, match="index_label_to_subcategory_with_clusters"):
        load_hgldv2(str(tmp_path))
    write_hgldv2(tmp_path)
    _tree(tmp_path, "index", "ii00").unlink()
    with pytest.raises(DatasetNotPreparedError, match=r"ii00\.jpg.*listed but missing"):
        load_hgldv2(str(tmp_path))
    with pytest.raises(ValueError, match="config.dataset.root is required"):
        data.load_dataset({"name": "hgldv2"})


def test_hgldv2_bad_columns(tmp_path):
    write_hgldv2(tmp_path)
    (tmp_path / "train_clean.csv").write_text("landmark,images\n10,aaa0\n")
    with pytest.raises(ValueError, match=r"train_clean\.csv: no column\(s\) \['landmark_id'\]"):
        load_hgldv2(str(tmp_path))


def test_hgldv2_clustered_landmark_without_overall_cluster_names_the_file_and_line(tmp_path):
    # It said "train_clean.csv: empty value in label column 'overall'", a file without it.
    write_hgldv2(tmp_path)
    path = tmp_path / "train_label_to_subcategory_with_clusters.csv"
    lines = path.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:-1]) + ","  # first landmark: overall_cluster empty
    path.write_text("\n".join(lines) + "\n")
    landmark = lines[1].split(",")[0]
    with pytest.raises(ValueError, match=rf"train_label_to_subcategory_with_clusters\.csv, line 2: "
                                         rf"landmark {landmark} has a cluster but an empty overall_cluster"):
        load_hgldv2(str(tmp_path))


@pytest.mark.filterwarnings("ignore:1 of the 9 images")  # landmark 14: tested above
def test_hgldv2_relevant_image_missing_from_the_index_list_names_the_query(tmp_path):
    # It was a bare KeyError('zz99').
    write_hgldv2(tmp_path)
    path = tmp_path / "retrieval_solution_v2.1.csv"
    path.write_text(path.read_text().replace("qq01,ij02,", "qq01,zz99 ij02,"))
    with pytest.raises(ValueError, match=r"retrieval_solution_v2\.1\.csv: query qq01's relevant index "
                                         r"image zz99 is not in index_image_to_landmark\.csv; check"):
        load_hgldv2(str(tmp_path))


def _write_train_hierarchy(root, lines):
    rows = ["landmark_id,category,supercategory,cluster,overall_cluster", *lines]
    (root / "train_label_to_subcategory_with_clusters.csv").write_text("\n".join(rows) + "\n")


def test_hgldv2_landmark_ids_written_as_floats_match_as_numbers(tmp_path):
    """A hierarchy file saved with float ids (10.0) dropped every training image silently; the
    official loader reads both files with pandas, whose numbers match (10 == 10.0)."""
    write_hgldv2(tmp_path)
    _write_train_hierarchy(
        tmp_path, ["10.0,x,y,c_b,o_x", "11.0,x,y,c_a,o_x", "012,x,y,c_b,o_x", "13.0,x,y,,"]
    )
    with pytest.warns(UserWarning, match=r"^1 of the 9 images"):  # landmark 14, as before
        ds = load_hgldv2(str(tmp_path))
    # Landmarks 10, 11, 12 kept with their clusters, as in the first test (13: no cluster).
    want = [[0, 1, 0]] * 2 + [[1, 0, 0]] * 3 + [[2, 1, 0]] * 2
    np.testing.assert_array_equal(np.asarray(ds.train.labels), want)


def test_hgldv2_hierarchy_file_that_matches_no_landmark_is_named(tmp_path):
    # All training images dropped: the training loop then blamed a folder dataset's CSV.
    write_hgldv2(tmp_path)
    _write_train_hierarchy(tmp_path, ["L10,x,y,c_b,o_x", "L11,x,y,c_a,o_x"])
    with pytest.raises(ValueError, match=r"train_label_to_subcategory_with_clusters\.csv: none of the 9 "
                                         r"images of train_clean\.csv has a landmark with a cluster"):
        load_hgldv2(str(tmp_path))
