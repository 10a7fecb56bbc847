"""`python -m pipeline.sample_data OUT_DIR`: the built-in sample corpus, made deterministically.

    OUT_DIR/clip/NNNNN.tar            img2dataset webdataset shards: {key}.jpg, {key}.txt, {key}.json
    OUT_DIR/clip/NNNNN.parquet        img2dataset's per-shard table (failed downloads included)
    OUT_DIR/clip/NNNNN_stats.json     img2dataset's per-shard stats
    OUT_DIR/sam/sa_NNNNNN.tar         SA-1B layout: sa_<id>.jpg + sa_<id>.json (COCO RLE masks)
    OUT_DIR/eval/classify/NOUN/N.jpg  zero-shot classification set: 3 crops of each photograph
    OUT_DIR/eval/voc/                 zero-shot segmentation set, Pascal-VOC layout (pipeline/sample/eval_sets.py)

Images are crops and flips of the photographs scikit-image ships. SA-1B masks come from a real
segmentation algorithm (Felzenszwalb's graph segmentation at two scales, so masks nest as SA-1B's
multi-granularity masks do), with bbox, area, point_coords, predicted_iou, stability_score and
crop_box filled in as SA-1B does. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import skimage.data
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.segmentation import felzenszwalb

from pipeline.sample.eval_sets import write_segmentation_set
from storage_schemas.plumbing.errors import run_cli

# (skimage.data function, caption noun); grayscale and RGBA photos are converted to RGB.
PHOTOS = [
    ("astronaut", "astronaut"),
    ("chelsea", "cat"),
    ("coffee", "cup of coffee"),
    ("rocket", "rocket"),
    ("hubble_deep_field", "galaxy field"),
    ("immunohistochemistry", "tissue sample"),
    ("stereo_motorcycle", "motorcycle"),
    ("retina", "retina"),
    ("colorwheel", "color wheel"),
    ("logo", "logo"),
    ("camera", "cameraman"),
    ("coins", "coins"),
    ("moon", "moon surface"),
    ("page", "page of text"),
    ("clock", "clock"),
    ("brick", "brick wall"),
    ("grass", "grass"),
    ("gravel", "gravel"),
    ("cell", "cell"),
    ("text", "text"),
]
# Colour photographs with objects worth segmenting, for the SA-1B side.
SAM_PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
]


@dataclass(frozen=True)
class CorpusSpec:
    clip_shards: int = 4
    clip_per_shard: int = 25
    failed_per_shard: int = 2  # rows in img2dataset's parquet for downloads that failed (not in the tar)
    sam_shards: int = 2
    sam_per_shard: int = 6
    seed: int = 0
    eval_per_class: int = 3


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8 RGB [H, W, 3]."""
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:  # composite on white, as a browser shows a logo
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(img)


def random_variant(img: np.ndarray, rng: np.random.Generator, longest: tuple[int, int]) -> np.ndarray:
    """A random crop (30-100% of the area, aspect 1:2 to 2:1), maybe flipped, resized."""
    h, w = img.shape[:2]
    area = rng.uniform(0.3, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    side = int(rng.integers(longest[0], longest[1] + 1))
    scale = side / max(ch, cw)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC))


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar with fixed metadata (mtime 0, root owner), so identical inputs give identical bytes."""
    with open(path + ".part", "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(path + ".part", path)


def write_clip_shard(
    out_dir: str, shard: int, spec: CorpusSpec, rng: np.random.Generator, photos: dict[str, np.ndarray]
) -> int:
    members, rows = [], []
    n_total = spec.clip_per_shard + spec.failed_per_shard
    failed_at = set(rng.choice(n_total, size=spec.failed_per_shard, replace=False).tolist())
    for i in range(n_total):
        key = f"{shard:05d}{i:04d}"
        name, noun = PHOTOS[int(rng.integers(len(PHOTOS)))]
        url = f"https://example.org/sample/{name}/{key}.jpg"
        if i in failed_at:
            rows.append(
                dict(
                    key=key,
                    url=url,
                    caption=None,
                    status="failed_to_download",
                    error_message="HTTP Error 404: Not Found",
                    width=None,
                    height=None,
                    original_width=None,
                    original_height=None,
                    exif=None,
                    sha256=None,
                )
            )
            continue
        img = random_variant(photos[name], rng, longest=(96, 512))
        jpg = encode_jpeg(img, quality=int(rng.integers(75, 96)))
        caption = f"a photo of the {noun}"
        h, w = img.shape[:2]
        meta = dict(
            key=key,
            url=url,
            caption=caption,
            status="success",
            error_message=None,
            width=w,
            height=h,
            original_width=w,
            original_height=h,
            exif="{}",
            sha256=hashlib.sha256(jpg).hexdigest(),
        )
        rows.append(meta)
        members += [
            (f"{key}.jpg", jpg),
            (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
        ]
    stem = os.path.join(out_dir, f"{shard:05d}")
    write_tar(stem + ".tar", members)
    pq.write_table(pa.Table.from_pylist(rows, schema=IMG2DATASET_SCHEMA), stem + ".parquet")
    n_ok = n_total - spec.failed_per_shard
    stats = {
        "count": n_total,
        "successes": n_ok,
        "failed_to_download": spec.failed_per_shard,
        "failed_to_resize": 0,
        "duration": 0.0,
        "start_time": 0.0,
        "end_time": 0.0,
        "status_dict": {"success": n_ok, "HTTP Error 404: Not Found": spec.failed_per_shard},
    }
    with open(stem + "_stats.json", "w") as f:
        json.dump(stats, f, indent=4, sort_keys=True)
    return n_ok


IMG2DATASET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def sa1b_annotations(
    img: np.ndarray, rng: np.random.Generator, first_id: int, max_annotations: int = 100
) -> list[dict]:
    """SA-1B-style annotations from Felzenszwalb segments at a fine and a coarse scale."""
    h, w = img.shape[:2]
    masks = []
    for scale, min_size in ((100, 50), (600, 300)):
        labels = felzenszwalb(img, scale=scale, sigma=0.8, min_size=min_size)
        for lab in range(labels.max() + 1):
            m = labels == lab
            if m.sum() >= 0.002 * h * w:
                masks.append(m)
    masks.sort(key=lambda m: -int(m.sum()))
    anns = []
    for m in masks[:max_annotations]:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ys, xs = np.nonzero(m)
        j = int(rng.integers(len(xs)))
        anns.append(
            {
                "id": first_id + len(anns),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "predicted_iou": round(float(rng.uniform(0.86, 1.02)), 6),
                "point_coords": [[float(xs[j]) + 0.5, float(ys[j]) + 0.5]],
                "stability_score": round(float(rng.uniform(0.92, 1.0)), 6),
                "crop_box": [0.0, 0.0, float(w), float(h)],
            }
        )
    return anns


def write_sam_shard(
    out_dir: str, shard: int, spec: CorpusSpec, rng: np.random.Generator, photos: dict[str, np.ndarray]
) -> int:
    members = []
    for i in range(spec.sam_per_shard):
        image_id = 1 + shard * spec.sam_per_shard + i
        name = SAM_PHOTOS[(shard * spec.sam_per_shard + i) % len(SAM_PHOTOS)]
        img = random_variant(photos[name], rng, longest=(320, 640))
        anns = sa1b_annotations(img, rng, first_id=image_id * 1000)
        h, w = img.shape[:2]
        doc = {
            "image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
            "annotations": anns,
        }
        members += [
            (f"sa_{image_id}.jpg", encode_jpeg(img, quality=90)),
            (f"sa_{image_id}.json", json.dumps(doc).encode()),
        ]
    write_tar(os.path.join(out_dir, f"sa_{shard:06d}.tar"), members)
    return spec.sam_per_shard


def write_classification_set(
    out_dir: str, spec: CorpusSpec, rng: np.random.Generator, photos: dict[str, np.ndarray]
) -> int:
    """OUT/NOUN/N.jpg: random crops of each photograph, one folder per caption noun."""
    for name, noun in PHOTOS:
        os.makedirs(os.path.join(out_dir, noun), exist_ok=True)
        for i in range(spec.eval_per_class):
            with open(os.path.join(out_dir, noun, f"{i}.jpg"), "wb") as f:
                f.write(encode_jpeg(random_variant(photos[name], rng, (200, 320)), 90))
    return len(PHOTOS) * spec.eval_per_class


def build_sample_corpus(out_dir: str, spec: CorpusSpec = CorpusSpec()) -> dict[str, int]:
    """Write the corpus under `out_dir`; returns sample counts per side."""
    clip_dir, sam_dir = os.path.join(out_dir, "clip"), os.path.join(out_dir, "sam")
    os.makedirs(clip_dir, exist_ok=True)
    os.makedirs(sam_dir, exist_ok=True)
    photos = {name: load_photo(name) for name, _ in PHOTOS}
    counts = {"clip": 0, "sam": 0}
    for shard in range(spec.clip_shards):
        counts["clip"] += write_clip_shard(clip_dir, shard, spec, np.random.default_rng([spec.seed, 1, shard]), photos)
    for shard in range(spec.sam_shards):
        counts["sam"] += write_sam_shard(sam_dir, shard, spec, np.random.default_rng([spec.seed, 2, shard]), photos)
    counts["classify"] = write_classification_set(
        os.path.join(out_dir, "eval", "classify"), spec, np.random.default_rng([spec.seed, 3]), photos
    )
    counts["semseg"] = write_segmentation_set(
        os.path.join(out_dir, "eval", "voc"), photos, np.random.default_rng([spec.seed, 4])
    )
    return counts


CORPUS_RECORD = "corpus.json"  # the spec, the counts and every file's SHA-256, written last


def corpus_files(out_dir: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every file of the corpus (the record apart)."""
    out = {}
    for root, _, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir)
            if rel != CORPUS_RECORD:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def recorded_counts(out_dir: str, spec: CorpusSpec) -> dict[str, int] | None:
    """The counts of a corpus already in `out_dir` from `spec` with every file as written, else None."""
    path = os.path.join(out_dir, CORPUS_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("spec") != asdict(spec) or record.get("files") != corpus_files(out_dir):
        return None
    return record["counts"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sample_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = CorpusSpec(seed=args.seed)
    counts = recorded_counts(args.out_dir, spec)
    if counts is not None:
        print(f"sample corpus in {args.out_dir}: present and unchanged ({CORPUS_RECORD}): kept")
        return 0
    counts = build_sample_corpus(args.out_dir, spec)
    with open(os.path.join(args.out_dir, CORPUS_RECORD), "w") as f:
        json.dump({"spec": asdict(spec), "counts": counts, "files": corpus_files(args.out_dir)}, f, indent=1)
    print(
        f"sample corpus in {args.out_dir}: {counts['clip']} CLIP samples in "
        f"{CorpusSpec.clip_shards} shards (clip/), {counts['sam']} SA-1B images in "
        f"{CorpusSpec.sam_shards} shards (sam/); eval/: {counts['classify']} labelled images (classify/), "
        f"{counts['semseg']} segmentation images (voc/)"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
