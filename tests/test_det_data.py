"""COCO-layout data (pycocotools), the training loader and COCO evaluation, on a tiny generated data set."""

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from vheat_jax.det import data, demo, evaluation


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return demo.make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, size=96, seed=3)


def test_dataset_is_deterministic(shapes_root, tmp_path):
    again = demo.make_shapes_dataset(tmp_path / "again", num_train=12, num_val=4, size=96, seed=3)
    for split in ("train", "val"):
        assert (again / "annotations" / f"instances_{split}.json").read_text() == \
            (shapes_root / "annotations" / f"instances_{split}.json").read_text()
    assert (again / "train" / "000005.png").read_bytes() == (shapes_root / "train" / "000005.png").read_bytes()


def test_coco_source_and_loader(shapes_root):
    source = data.CocoSource(shapes_root, "train", train=True, min_size=1)
    assert len(source) == 12 and source.classes == demo.CLASSES
    record = source.records[0]
    masks = source.load_masks(0)
    assert masks.shape == (len(record.boxes), 96, 96)
    for box, mask in zip(record.boxes, masks):  # boxes enclose their masks
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(box[0]) and xs.max() <= np.ceil(box[2])
        assert ys.min() >= np.floor(box[1]) and ys.max() <= np.ceil(box[3])
    loader = data.DetLoader(source, global_batch=4, scales=[(144, 120)], max_gt=5, seed=0, num_threads=2)
    batch = next(loader)
    assert batch["image"].shape == (4, 128, 160, 3) and batch["gt_masks"].shape == (4, 5, 128, 160)
    assert (batch["img_hw"] == [120, 120]).all() and batch["image_valid"].all()
    valid = batch["gt_valid"]
    assert valid.any(1).all()
    boxes = batch["gt_boxes"][valid]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 2:] <= 120).all()
    # the loader resumes where it stopped
    state = loader.get_state()
    expected = next(loader)
    fresh = data.DetLoader(source, global_batch=4, scales=[(144, 120)], max_gt=5, seed=0, num_threads=2)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["image"], expected["image"])
    # two processes each load their half of the same global batch
    halves = [next(data.DetLoader(source, global_batch=4, scales=[(144, 120)], max_gt=5, seed=0, process_index=p,
                                  process_count=2, num_threads=1))["gt_boxes"] for p in range(2)]
    fresh.set_state(b'{"epoch": 0, "position": 0, "pending": {"landscape": [], "portrait": []}}')
    np.testing.assert_array_equal(np.concatenate(halves), next(fresh)["gt_boxes"])


def test_coco_eval_of_ground_truth_is_perfect(shapes_root):
    source = data.CocoSource(shapes_root, "val", train=False)
    results = []
    for index, record in enumerate(source.records):
        results += evaluation.detections_to_coco(record.image_id, record.boxes, np.ones(len(record.boxes)),
                                               record.labels, source.load_masks(index).astype(bool), source.cat_ids)
    metrics = evaluation.coco_evaluate(source.annotation_file, results)
    assert metrics["bbox_mAP"] > 0.99 and metrics["segm_mAP"] > 0.99
    shuffled = [dict(r, category_id=source.cat_ids[(source.cat_ids.index(r["category_id"]) + 1) % 3]) for r in results]
    assert evaluation.coco_evaluate(source.annotation_file, shuffled)["bbox_mAP"] < 0.01
