"""Decode + view rendering throughput per CPU core: this project's rule against a straightforward
per-view baseline, side by side in one run.

    python bench/decode_render.py [--views 3] [--repeat 3]

baseline: for every view, PIL decode of the bytes + torchvision transforms to a normalised float
          tensor (view 0: open_clip's preprocess_val; others: RandomResizedCrop + flip).
ours:     storage_schemas.decode_image once per sample (JPEG draft for the 224 px output), then
          render_view for each view, uint8 (the teacher normalises on its own device).
Two image sets: the sample corpus (<= 512 px, as img2dataset often resizes) and web-size photos
(about 1600 x 1200, as YFCC-15M or unresized crawls hold). One process, one torch thread.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import open_clip
import torch
from PIL import Image
from torchvision import transforms as T

from pipeline.sample.corpus import PHOTOS, build_sample_corpus, load_photo
from storage_schemas.pixels.decode import decode_image, draft_side_for
from storage_schemas.pixels.views import render_view, sample_views
from storage_schemas.plumbing.identity import SampleId

SIZE = 224
SCALE, RATIO = (0.35, 1.0), (3 / 4, 4 / 3)


def corpus_jpegs() -> list[bytes]:
    with tempfile.TemporaryDirectory() as d:
        build_sample_corpus(d)
        out = []
        for i in range(4):
            with tarfile.open(f"{d}/clip/{i:05d}.tar") as tar:
                out += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
        return out


def web_jpegs(n: int = 40) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(load_photo(PHOTOS[i % len(PHOTOS)][0]))
        w = int(rng.integers(1400, 1800))
        img = img.resize((w, int(w * rng.uniform(0.6, 0.9))), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def baseline(jpegs: list[bytes], views: int) -> None:
    _, _, preprocess_val = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None, device="meta")
    rrc = T.Compose(
        [
            T.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD),
        ]
    )
    for data in jpegs:
        for v in range(views):
            img = Image.open(io.BytesIO(data)).convert("RGB")
            (preprocess_val if v == 0 else rrc)(img)


def ours(jpegs: list[bytes], views: int) -> None:
    for i, data in enumerate(jpegs):
        decoded = decode_image(data, draft_side=draft_side_for(SIZE)).image
        w, h = decoded.size
        for v in sample_views(
            0,
            SampleId("bench", "0", str(i)),
            width=w,
            height=h,
            n_views=views,
            size=SIZE,
            scale=SCALE,
            ratio=RATIO,
            flip=True,
        ):
            render_view(decoded, v.crop, v.flip, SIZE)


def best_of(fn, jpegs, views, repeat) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(jpegs, views)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"K={args.views} views per sample, {SIZE} px, 1 process, 1 torch thread, best of {args.repeat}")
    print(f"{'image set':<28}{'baseline views/s':>18}{'ours views/s':>14}{'ours / baseline':>17}")
    for name, jpegs in [("sample corpus (<=512 px)", corpus_jpegs()), ("web-size (~1600x1200)", web_jpegs())]:
        n_views = len(jpegs) * args.views
        tb = best_of(baseline, jpegs, args.views, args.repeat)
        to = best_of(ours, jpegs, args.views, args.repeat)
        print(f"{name:<28}{n_views / tb:>18.1f}{n_views / to:>14.1f}{tb / to:>16.2f}x")


if __name__ == "__main__":
    main()
