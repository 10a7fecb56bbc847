"""Job configuration: the typed form of `jobs/*.yaml`.

    store:   {url: s3://bucket/targets/v1, storage_options: {client_kwargs: {endpoint_url: ...}}}
    seed:    0                      # store seed: every view and prompt seed derives from it
    sources: [{name: cc12m, kind: clip, shards: "s3://bucket/cc12m/{00000..01242}.tar"}, ...]
    clip:    {teacher: {arch: ViT-L-14, pretrained: datacomp_xl_s13b_b90k}, views: 10, view_policy: {...}}
    sam:     {teacher: {model: vit_b, checkpoint: s3://.../sam_vit_b_01ec64.pth}, prompts: 64, precision: fp16}
    ray:     {teacher_actors: 8, gpus_per_actor: 1, cpus_per_actor: 8, batch_size: 256}
    claims:  {lease_seconds: 600}          # jobs sharing one store: see pipeline.materialize.claims
    retrieval: {index: auto, nprobe: 64}   # pipeline.transfer_set's faiss index

Load with `load_job_config(path, ["clip.views=4"])`; see storage_schemas.plumbing.typed_config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from storage_schemas.models.sam_models import SAM_ARCHS
from storage_schemas.models.teacher_config import ClipTeacherConfig
from storage_schemas.pixels.decode import check_max_pixels
from storage_schemas.plumbing.typed_config import FieldError, load_config
from storage_schemas.store import StoreConfig
from storage_schemas.store.layout import check_name
from storage_schemas.store.mask_logits import PRECISIONS


@dataclass
class SourceConfig:
    name: str  # e.g. cc3m, cc12m, yfcc15m, in21k, sa1b; part of every sample's identity
    kind: Literal["clip", "sam"]
    shards: str | list[str]  # URLs or brace patterns: "s3://b/cc12m/{00000..01242}.tar"
    storage_options: dict[str, Any] = field(default_factory=dict)  # for reading the inputs
    # Samples per commit unit; 0: each shard is one unit; null: what the store's committed units of
    # this source were cut with, else DEFAULT_UNIT_SIZE of the kind (sized in pipeline.plan).
    unit_size: int | None = None

    def validate(self) -> None:
        try:
            check_name("source", self.name)
        except ValueError as e:
            raise FieldError("name", str(e)) from None
        if self.unit_size is not None and self.unit_size < 0:
            raise FieldError(
                "unit_size", f"expected a number of samples, 0 (whole shards) or null, got {self.unit_size}"
            )
        if not self.shards:
            raise FieldError("shards", "expected at least one shard URL or pattern")


@dataclass
class ViewPolicy:
    scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # crop area fraction, random resized crop
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # crop aspect ratio range
    flip: bool = True  # random horizontal flip for views 1..K-1

    def validate(self) -> None:
        for name, pair in (("scale", self.scale), ("ratio", self.ratio)):
            if len(pair) != 2:
                raise FieldError(name, f"expected [low, high], got {pair}")
            lo, hi = pair
            if not 0 < lo <= hi:
                raise FieldError(name, f"expected [low, high] with 0 < low <= high, got {[lo, hi]}")
        if self.scale[1] > 1:
            raise FieldError("scale", f"expected fractions of the image area <= 1, got {self.scale}")


@dataclass
class ClipConfig:
    teacher: ClipTeacherConfig = field(default_factory=ClipTeacherConfig)
    views: int = 10  # K views per sample; view 0 is the canonical evaluation view
    view_policy: ViewPolicy = field(default_factory=ViewPolicy)

    def validate(self) -> None:
        if self.views < 1:
            raise FieldError("views", f"expected at least 1 view per sample, got {self.views}")


@dataclass
class SamTeacherConfig:
    model: str = "vit_b"  # a name in storage_schemas.models.sam_models.SAM_ARCHS
    checkpoint: str | None = None  # local path or fsspec URL; null = random init (benchmarks only)
    init_seed: int = 0

    def validate(self) -> None:
        if self.model not in SAM_ARCHS:
            raise FieldError(
                "model", f"unknown SAM architecture {self.model!r}; expected one of {', '.join(SAM_ARCHS)}"
            )


@dataclass
class PromptMix:
    box: float = 0.5  # fractions of prompts per structure
    points: float = 0.25
    box_points: float = 0.25

    def validate(self) -> None:
        if min(self.box, self.points, self.box_points) < 0 or self.box + self.points + self.box_points <= 0:
            raise FieldError("box", "expected non-negative fractions that are not all zero")


@dataclass
class SamConfig:
    teacher: SamTeacherConfig = field(default_factory=SamTeacherConfig)
    prompts: int = 64  # P prompts stored per image; the trainer draws P' (paper: 32) of them
    mix: PromptMix = field(default_factory=PromptMix)
    box_jitter: float = 0.1  # box noise std as a fraction of box side, as in SAM training; 0 = none
    points_per_prompt: int = 1
    multimask: bool = False  # M = 3 outputs instead of 1
    rounds: int = 1  # 2 adds the mask-prompt round: round-0 logits fed back with the same box/points
    precision: str = "fp16"  # see storage_schemas.store.mask_logits.PRECISIONS

    def validate(self) -> None:
        if self.prompts < 1:
            raise FieldError("prompts", f"expected at least 1, got {self.prompts}")
        if self.rounds not in (1, 2):
            raise FieldError("rounds", f"expected 1 or 2, got {self.rounds}")
        if self.precision not in PRECISIONS:
            raise FieldError("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.points_per_prompt < 1:
            raise FieldError("points_per_prompt", f"expected at least 1, got {self.points_per_prompt}")


@dataclass
class RayConfig:
    teacher_actors: int = 1  # long-lived teacher actors (one teacher load each)
    gpus_per_actor: float | None = None  # null: 1 where the cluster has GPUs, else 0 (CPU teachers)
    cpus_per_actor: float = 1  # also the actor's torch threads and, by default, its decode/render threads
    render_threads: int | None = None  # threads per actor decoding and rendering; null: cpus_per_actor
    calls_per_actor: int = 2  # batches an actor holds at once: one on the teacher, the others decoding or writing
    batch_size: int = 32  # samples per CLIP teacher batch; each brings its K views
    sam_batch_size: int = 4  # images per SAM teacher batch; each runs the encoder once, its prompts by structure
    read_cpus: float = 0.5  # CPUs per read task: it streams tar members, the actors decode
    # Read tasks running at once (each holds a unit in flight); null: 2 per teacher actor.
    read_tasks: int | None = None
    # A batch whose actor died is retried this often, then its unit fails. Retries to an actor that
    # Ray is restarting on another node fail about once a second until it is back (measured with a
    # worker node killed): the budget must outlast an actor's restart, teacher load included.
    max_batch_retries: int = 20
    num_cpus: int | None = None  # only when this job starts a local Ray: CPUs to give it (null: all)

    def validate(self) -> None:
        for name in ("teacher_actors", "batch_size", "sam_batch_size", "calls_per_actor"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1, got {getattr(self, name)}")
        if self.max_batch_retries < 0:
            raise FieldError("max_batch_retries", f"expected 0 or more, got {self.max_batch_retries}")
        for name in ("read_tasks", "render_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1 or null, got {getattr(self, name)}")
        for name in ("cpus_per_actor", "read_cpus"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"expected a positive number of CPUs, got {getattr(self, name)}")


@dataclass
class ClaimsConfig:
    """How jobs that share a store share its units (pipeline.materialize.claims)."""

    # A claim its job has not renewed for this long may be taken over by another job (by the
    # store's clock). The holder renews every third of it; it must outlast the time a read task's
    # first rows take to reach the driver (a teacher batch or two), and bounds how long a job waits
    # on a unit whose holder died on another machine (one that died on this machine is seen at once).
    lease_seconds: float = 300.0

    def validate(self) -> None:
        if self.lease_seconds <= 0:
            raise FieldError("lease_seconds", f"expected a positive number of seconds, got {self.lease_seconds}")


INDEX_KINDS = ("auto", "flat", "ivfpq")


@dataclass
class RetrievalConfig:
    """Transfer-set retrieval (pipeline.transfer_set): the faiss index over the stored view embeddings."""

    # flat: exact inner product over the fp16 vectors (faiss SQfp16: the stored values, lossless);
    # ivfpq: inverted lists + 4-bit fast-scan PQ codes, candidates re-ranked with the stored
    # embeddings; auto: flat while the vectors take at most flat_max_gb, else ivfpq; or any faiss
    # index_factory string ("IVF4096,PQ128x4fs").
    index: str = "auto"
    flat_max_gb: float = 32.0
    ivf_lists: int | None = None  # null: 4 x sqrt(vectors), a power of two, at least 39 vectors a list
    pq_bytes: int = 64  # code bytes per vector: 2 x pq_bytes 4-bit sub-quantizers (at most D)
    nprobe: int | None = None  # lists searched per query; null: ivf_lists / 16
    train_vectors: int = 262_144  # vectors the IVF/PQ quantizers are trained on: whole units, seeded
    rerank: int = 2000  # candidates per query an approximate index re-ranks exactly (bench/retrieval.py)
    # Queries faiss searches together; the candidates of all queries are then scored in one pass
    # over the part files (~40 bytes a candidate: 10k queries x 2000 = 0.8 GB).
    query_batch: int = 256

    def validate(self) -> None:
        if self.index not in INDEX_KINDS and "," not in self.index and not self.index.startswith(("SQ", "Flat")):
            raise FieldError(
                "index",
                f"expected one of {', '.join(INDEX_KINDS)} or a faiss index_factory string "
                f"such as 'IVF4096,PQ128x4fs', got {self.index!r}",
            )
        for name in ("pq_bytes", "train_vectors", "rerank", "query_batch"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1, got {getattr(self, name)}")
        for name in ("ivf_lists", "nprobe"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1 or null, got {getattr(self, name)}")
        if self.flat_max_gb <= 0:
            raise FieldError("flat_max_gb", f"expected a positive size, got {self.flat_max_gb}")


@dataclass
class JobConfig:
    store: StoreConfig
    sources: list[SourceConfig]
    seed: int = 0
    clip: ClipConfig = field(default_factory=ClipConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    claims: ClaimsConfig = field(default_factory=ClaimsConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_image_pixels: int = 178_956_970  # larger images are errors (decompression bombs): Pillow's own limit

    def validate(self) -> None:
        names = [(s.name, s.kind) for s in self.sources]
        if len(set(names)) != len(names):
            raise FieldError("sources", "two sources share a name and kind; names are part of sample identity")
        problem = check_max_pixels(self.max_image_pixels)
        if problem:
            raise FieldError("max_image_pixels", problem)


def load_job_config(path: str | None, overrides: list[str] = ()) -> JobConfig:
    return load_config(JobConfig, path, list(overrides))
