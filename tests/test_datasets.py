"""The benchmarks' layouts read as their releases unpack, each built from the sample corpus's
photographs with real file names and folders: the right labels, the right class names, and one
line naming the expected file or folder when a root is not the layout it is said to be."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from storage_schemas.datasets import TEXT_TABLES, classification_set, open_dataset, segmentation_set
from storage_schemas.datasets.class_names import BENCHMARK_FILES, benchmark_classes, imagenet_wnids
from storage_schemas.datasets.loading import load_in_order
from storage_schemas.datasets.segmentation import rasterise_instances
from storage_schemas.plumbing.errors import ConfigError
from support import benchmark_layouts as layouts


def labels_of(ds) -> dict[str, int]:
    return {key: label for key, _, label in ds.samples(workers=2)}


@pytest.mark.parametrize(
    "name, size",
    [
        ("imagenet", 1000),
        ("places365", 365),
        ("voc", 21),
        ("context59", 59),
        ("ade20k", 150),
        ("coco-stuff", 171),
        ("coco-object", 81),
    ],
)
def test_each_benchmark_ships_its_class_names(name, size):
    names = benchmark_classes(name)
    assert len(names) == size
    # open_clip's ImageNet names two pairs of classes alike, as CLIP's paper did
    repeated = {n for n in names if names.count(n) > 1}
    assert repeated == ({"missile", "sunglasses"} if name == "imagenet" else set())
    assert all(n == n.strip() and n for n in names)


def test_every_benchmark_list_is_a_dataset_s_text_table():
    assert set(TEXT_TABLES.values()) == set(BENCHMARK_FILES)
    assert benchmark_classes("coco-object")[:2] == ("background", "person")
    assert benchmark_classes("ade20k")[:3] == ("wall", "building", "sky")
    assert benchmark_classes("places365")[:2] == ("airfield", "airplane cabin")
    assert imagenet_wnids()[:2] == ("n01440764", "n01443537")


def test_imagenet_v2_labels_folders_by_number_not_by_name(sample_corpus, tmp_path):
    keys = layouts.imagenet_v2(tmp_path / "v2", layouts.photos(sample_corpus), classes=12)
    ds = classification_set("imagenet-v2", str(tmp_path / "v2"))
    got = labels_of(ds)
    assert got == keys
    assert {k for k, v in got.items() if v == 10} == {k for k in keys if k.startswith("10/")}
    assert ds.classnames == list(benchmark_classes("imagenet"))


def test_imagenet_val_as_wordnet_folders_and_as_the_flat_folder_with_its_solution_file(sample_corpus, tmp_path):
    pictures, labels = layouts.photos(sample_corpus), [0, 5, 5, 999, 321]
    folders = layouts.imagenet_folders(tmp_path / "val", pictures, labels)
    assert labels_of(classification_set("imagenet", str(tmp_path / "val"))) == folders
    flat_root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    flat = layouts.imagenet_flat(flat_root, pictures, labels)
    ds = classification_set("imagenet", str(flat_root))
    assert labels_of(ds) == flat
    assert len(ds.classnames) == 1000
    # A subset run: four names for the four classes present, in label order.
    subset = tmp_path / "four.txt"
    subset.write_text("tench\ngoldfish\nshark\ntoilet tissue\n")
    ds = classification_set("imagenet", str(flat_root), classes=str(subset))
    assert ds.classnames == ["tench", "goldfish", "shark", "toilet tissue"]
    assert sorted(labels_of(ds).values()) == [0, 1, 1, 2, 3]


def test_places365_reads_its_list_file_and_skips_listed_images_that_are_missing(sample_corpus, tmp_path):
    keys = layouts.places365(tmp_path / "places", layouts.photos(sample_corpus), [0, 364, 165, 7], missing=1)
    skipped: list[dict] = []
    ds = classification_set("places365", str(tmp_path / "places"), skipped)
    assert labels_of(ds) == keys
    assert [(s["key"], s["reason"]) for s in skipped] == [("Places365_val_00000004.jpg", "missing_file")]
    assert ds.classnames[364] == "zen garden"


@pytest.mark.parametrize("name", ["context59", "ade20k", "coco-stuff", "coco-object"])
def test_segmentation_layouts_read_back_the_labels_they_were_made_from(name, sample_corpus, tmp_path):
    root = layouts.segmentation_layout(name, tmp_path / name, sample_corpus)
    ds = segmentation_set(name, str(root))
    got = list(ds.samples(workers=2))
    assert len(got) == len(layouts.VOC_IDS)
    for (key, image, label), id_ in zip(got, layouts.VOC_IDS):
        want = layouts.voc_label(sample_corpus, id_)
        if name == "coco-object":  # objects are class + 1 over background 0; VOC's borders are no instance
            want = np.where(want == 255, 0, want + 1)
        np.testing.assert_array_equal(label, want, err_msg=f"{name} {key}")
        assert label.shape == (image.height, image.width)
    assert len(ds.classnames) == len(benchmark_classes(name))


def test_ade20k_ignores_0_and_makes_1_class_0(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    Image.new("RGB", (4, 1), "white").save(root / "images" / "validation" / "ADE_val_00000001.jpg")
    layouts.write_png(root / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1, 150, 2]]))
    ((_, _, label),) = list(segmentation_set("ade20k", str(root)))
    assert label.tolist() == [[255, 0, 149, 1]]


def test_coco_instances_rasterise_small_over_large_and_crowds_are_ignored():
    from pycocotools.coco import COCO

    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": box(0, 0, 8, 8), "area": 64.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "segmentation": box(2, 2, 4, 4), "area": 4.0, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": box(6, 6, 10, 10), "area": 16.0, "iscrowd": 1},
        ],
        "categories": [{"id": c} for c in (1, 3, 90)],
    }
    coco.createIndex()
    label = rasterise_instances(coco, 1, 10, 10, {1: 0, 3: 2, 90: 79})
    assert label[1, 1] == 1  # person
    assert label[3, 3] == 80  # toothbrush, drawn over the person it lies on
    assert label[7, 7] == 1  # the crowd's region inside the person stays the person's
    assert label[9, 9] == 255  # crowd alone: ignored
    assert label[0, 9] == 0  # background


def test_a_root_that_is_not_the_layout_names_what_it_expected(sample_corpus, tmp_path):
    classify = str(sample_corpus / "eval" / "classify")
    cases = [
        ("imagenet", classify, "is not an ImageNet-1k WordNet id"),
        ("imagenet-v2", classify, "is not a class number 0 ... 999"),
        ("places365", classify, "no val_256/ or val_large/"),
        ("wds", classify, "expected webdataset shards"),
        ("ade20k", classify, "images/validation (expected ADEChallengeData2016"),
        ("context59", classify, "JPEGImages (expected VOC2010"),
        ("coco-stuff", classify, "images/val2017 (expected COCO-Stuff"),
        ("coco-object", classify, "instances_val2017.json"),
        ("voc", str(tmp_path / "none"), "none (expected a Pascal VOC folder"),
    ]
    for name, root, message in cases:
        with pytest.raises(ConfigError) as e:
            list(open_dataset(name, root, []))
        assert message in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value), name


def test_a_label_outside_the_class_list_names_its_file(sample_corpus, tmp_path):
    root = layouts.segmentation_layout("coco-stuff", tmp_path / "stuff", sample_corpus)
    bad = root / "annotations" / "val2017" / f"{layouts.VOC_IDS[1]}_labelTrainIds.png"
    label = layouts.voc_label(sample_corpus, layouts.VOC_IDS[1]).copy()
    label[0, 0] = 200
    layouts.write_png(bad, label)
    with pytest.raises(ConfigError, match=f"{bad}: label value 200, but coco-stuff has 171 class names"):
        list(segmentation_set("coco-stuff", str(root)).samples(workers=2))
    places = tmp_path / "places"
    layouts.places365(places, layouts.photos(sample_corpus), [3])
    listing = places / "filelist_places365-standard" / "places365_val.txt"
    listing.write_text("Places365_val_00000001.jpg 365\n")
    with pytest.raises(ConfigError, match="places365_val.txt:1: expected 'FILE LABEL' with a label 0 ... 364"):
        classification_set("places365", str(places))


def test_loading_ahead_keeps_the_order_drops_skips_and_raises_at_the_item():
    def load(i):
        time.sleep(0.01 * (i % 3))  # later items finish first
        if i == 7:
            return None
        return i, threading.current_thread().name

    got = list(load_in_order(range(20), load, workers=4))
    assert [i for i, _ in got] == [i for i in range(20) if i != 7]
    assert len({name for _, name in got}) > 1

    def fail(i):
        if i == 5:
            raise ConfigError("item 5 is bad")
        return i

    seen = []
    with pytest.raises(ConfigError, match="item 5"):
        for i in load_in_order(range(10), fail, workers=3):
            seen.append(i)
    assert seen == [0, 1, 2, 3, 4]
