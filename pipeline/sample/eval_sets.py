"""The sample corpus's segmentation set (written by `python -m pipeline.sample_data`).

    OUT_DIR/eval/voc/JPEGImages/ID.jpg      composites: photographed objects pasted as ellipses on a
    OUT_DIR/eval/voc/SegmentationClass/ID.png   texture photograph; the label map is exact by
    OUT_DIR/eval/voc/ImageSets/Segmentation/val.txt   construction (greyscale class indices, a 3 px
    OUT_DIR/eval/voc/classes.txt            ignore band (255) around each object, as VOC's borders)

Every class name is one of jobs/sample_classes.txt, so the store's `sample` text table covers them.
The figures these sets give with random teachers say the code runs, not that the student is good.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = [("grass", "grass"), ("brick", "brick wall"), ("gravel", "gravel")]
OBJECTS = [
    ("astronaut", "astronaut"),
    ("chelsea", "cat"),
    ("coffee", "cup of coffee"),
    ("rocket", "rocket"),
    ("stereo_motorcycle", "motorcycle"),
]
IGNORE = 255
BORDER = 3
SEG_IMAGES = 6
SEG_SIZE = (320, 240)  # width, height


def _texture(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    w, h = SEG_SIZE
    scale = max(w / photo.shape[1], h / photo.shape[0]) * rng.uniform(1.0, 1.5)
    im = Image.fromarray(photo).resize((round(photo.shape[1] * scale), round(photo.shape[0] * scale)), Image.BICUBIC)
    x0, y0 = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    return im.crop((x0, y0, x0 + w, y0 + h))


def composite(
    background: np.ndarray,
    objects: list[np.ndarray],
    classes: list[int],
    background_class: int,
    rng: np.random.Generator,
) -> tuple[Image.Image, np.ndarray]:
    """Objects pasted as ellipses on a texture -> (image, uint8 label map [H, W])."""
    image = _texture(background, rng)
    label = np.full((SEG_SIZE[1], SEG_SIZE[0]), background_class, np.uint8)
    for photo, cls in zip(objects, classes):
        ow, oh = int(rng.integers(90, 170)), int(rng.integers(80, 150))
        x0, y0 = int(rng.integers(0, SEG_SIZE[0] - ow)), int(rng.integers(0, SEG_SIZE[1] - oh))
        obj = Image.fromarray(photo).resize((ow, oh), Image.BICUBIC)
        mask = Image.new("L", (ow, oh), 0)
        ImageDraw.Draw(mask).ellipse([0, 0, ow - 1, oh - 1], fill=255)
        image.paste(obj, (x0, y0), mask)
        ring = Image.new("L", (ow, oh), 0)
        ImageDraw.Draw(ring).ellipse([0, 0, ow - 1, oh - 1], outline=255, width=BORDER)
        region = label[y0 : y0 + oh, x0 : x0 + ow]  # a view: writes go into `label`
        region[np.asarray(mask) > 0] = cls
        region[np.asarray(ring) > 0] = IGNORE
    return image, label


def write_segmentation_set(out_dir: str, photos: dict[str, np.ndarray], rng: np.random.Generator) -> int:
    names = [noun for _, noun in BACKGROUNDS] + [noun for _, noun in OBJECTS]
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    ids = []
    for i in range(SEG_IMAGES):
        bg = i % len(BACKGROUNDS)
        picks = rng.choice(len(OBJECTS), size=1 + i % 2, replace=False)
        image, label = composite(
            photos[BACKGROUNDS[bg][0]],
            [photos[OBJECTS[k][0]] for k in picks],
            [len(BACKGROUNDS) + int(k) for k in picks],
            bg,
            rng,
        )
        id_ = f"sample_{i:03d}"
        image.save(os.path.join(out_dir, "JPEGImages", f"{id_}.jpg"), quality=92)
        Image.fromarray(label, mode="L").save(os.path.join(out_dir, "SegmentationClass", f"{id_}.png"))
        ids.append(id_)
    with open(os.path.join(out_dir, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return len(ids)
