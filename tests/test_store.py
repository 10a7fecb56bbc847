"""The target-store contract: schemas round-trip through Parquet and Zarr, only committed units are
read, and a job with different must-match fields is refused with the field named."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import ClipTeacherConfig, load_job_config
from pipeline.materialize.job_manifests import clip_manifest
from pipeline.teachers import load_clip_teacher
from storage_schemas.models.clip_archs import TINY_CLIP_ARCH
from storage_schemas.plumbing.errors import ManifestMismatch, StoreError
from storage_schemas.store import layout, open_store
from storage_schemas.store.clip_views import clip_views_schema
from storage_schemas.store.commit import CommitRecord, InputRef, create_commit, read_commit
from storage_schemas.store.manifest import Manifest, ensure_manifest
from storage_schemas.store.mask_logits import (
    FP16_MAX_PROB_ERROR,
    UINT8_MAX_PROB_ERROR,
    decode_logits,
    encode_logits,
    fill_value,
    logits_group_objects,
    open_logits,
)
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.sam_tables import SAM_IMAGES_SCHEMA, sam_prompts_schema
from storage_schemas.store.tables import ERRORS_SCHEMA, parquet_bytes, text_embeddings_schema

D = 64


def clip_rows(n_samples: int, views: int, shard: str) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_samples):
        for v in range(views):
            e = rng.normal(size=D).astype(np.float32)
            rows.append(
                dict(
                    source="sample",
                    shard=shard,
                    key=f"{shard}{i:04d}",
                    sample_index=i,
                    view=v,
                    width=320,
                    height=240,
                    crop=[0.1, 0.0, 0.9, 1.0],
                    flip=bool(v % 2),
                    pixel_hash="0123456789abcdef",
                    embedding=(e / np.linalg.norm(e)).astype(np.float16),
                )
            )
    return rows


def sample_tables() -> dict[str, tuple[pa.Schema, list[dict]]]:
    return {
        "views": (clip_views_schema(D), clip_rows(2, 3, "00000")),
        "prompts": (
            sam_prompts_schema(1),
            [
                dict(
                    source="sa1b",
                    shard="sa_000000",
                    key="sa_1",
                    sample_index=0,
                    prompt=0,
                    round=0,
                    slot=0,
                    structure="box",
                    annotation_id=1000,
                    box=[1.0, 2.0, 30.5, 40.0],
                    point_coords=[],
                    point_labels=[],
                    iou=[0.9],
                ),
                dict(
                    source="sa1b",
                    shard="sa_000000",
                    key="sa_1",
                    sample_index=0,
                    prompt=1,
                    round=0,
                    slot=1,
                    structure="points",
                    annotation_id=1001,
                    box=None,
                    point_coords=[[3.5, 4.5], [5.0, 6.0]],
                    point_labels=[1, 0],
                    iou=[0.7],
                ),
            ],
        ),
        "images": (
            SAM_IMAGES_SCHEMA,
            [
                dict(
                    source="sa1b",
                    shard="sa_000000",
                    key="sa_1",
                    sample_index=0,
                    width=640,
                    height=480,
                    n_annotations=90,
                    n_prompts=2,
                    skipped_annotations=[{"reason": "empty_mask", "count": 3}],
                ),
            ],
        ),
        "errors": (
            ERRORS_SCHEMA,
            [
                dict(
                    kind="clip",
                    source="sample",
                    shard="00000",
                    unit="00000",
                    key="000000007",
                    sample_index=7,
                    members=["000000007.jpg", "000000007.json"],
                    reason="truncated",
                    detail="image file is truncated",
                ),
            ],
        ),
        "text": (
            text_embeddings_schema(D),
            [
                dict(class_index=0, class_name="cat", embedding=np.ones(D, np.float32) / 8.0),
            ],
        ),
    }


@pytest.mark.parametrize("name", ["views", "prompts", "images", "errors", "text"])
def test_tables_round_trip_through_parquet(tmp_path, name):
    schema, rows = sample_tables()[name]
    table = pa.Table.from_pylist(rows, schema=schema)
    storage = StoreRoot(str(tmp_path))
    entry = storage.write_bytes(f"t/{name}.parquet", parquet_bytes(table))
    back = pq.read_table(tmp_path / "t" / f"{name}.parquet")
    assert back.schema.equals(schema, check_metadata=True)
    assert back.equals(table)
    assert entry == storage.file_entry(f"t/{name}.parquet")


def test_embeddings_are_fixed_width_fp16():
    field = clip_views_schema(D).field("embedding")
    # A fixed-size list of D float16 items named "element", as Parquet names them (pyarrow's type
    # equality ignores the item's name, the field's does not), never null.
    assert field.type == pa.list_(pa.field("element", pa.float16()), D)
    assert field.type.value_field == pa.field("element", pa.float16())
    assert not field.nullable
    t = pa.Table.from_pylist(clip_rows(1, 1, "00000"), schema=clip_views_schema(D))
    emb = t.column("embedding").combine_chunks()
    assert pa.types.is_fixed_size_list(emb.type)
    assert emb.type.list_size == D
    assert emb.values.type == pa.float16()
    assert emb.values.nbytes == 2 * D  # the fp16 floor: 2 x D bytes per view
    # and so they come back from a views file
    back = pq.read_table(pa.BufferReader(parquet_bytes(t))).schema.field("embedding")
    assert back.type == field.type
    assert back.type.value_field == field.type.value_field


@pytest.mark.parametrize("precision", ["fp16", "uint8_sigmoid"])
def test_mask_logits_round_trip_through_zarr(tmp_path, precision):
    rng = np.random.default_rng(1)
    storage = StoreRoot(str(tmp_path))
    n, slots = 4, 4
    logits = (rng.normal(size=(n, slots, 1, 256, 256)) * 8).astype(np.float32)
    logits[:, :, :, :2, :2] = [[-60.0, 60.0], [0.0, 1e-3]]  # saturated and near-zero values
    n_prompts = [4, 2, 3, 0]  # the last image has no prompt: fill only, it still gets its chunk
    stored = np.full((n, slots, 1, 256, 256), fill_value(precision), dtype=encode_logits(logits[:1], precision).dtype)
    for i in range(n):  # slots beyond n_prompts keep the fill value
        stored[i, : n_prompts[i]] = encode_logits(logits[i, : n_prompts[i]], precision)
    objects = logits_group_objects(stored, precision)
    assert sorted(objects) == ["logits/c/0/0/0/0/0", "logits/zarr.json", "zarr.json"]  # one shard for the part
    for key, data in objects.items():
        storage.write_bytes(f"sam/s/u/p.zarr/{key}", data)
    group = tmp_path / "sam/s/u/p.zarr"
    assert sorted(p.relative_to(group).as_posix() for p in group.rglob("*") if p.is_file()) == sorted(objects)
    back = open_logits(storage, "sam/s/u/p.zarr")
    assert back.shape == (n, slots, 1, 256, 256)
    assert back.chunks == (1, slots, 1, 256, 256)
    assert back.shards == (n, slots, 1, 256, 256)
    assert back.attrs["precision"] == precision
    # Every image's chunk is stored (a missing one would read as the fill value): the shard is
    # there, and its index (Zarr's sharding codec: (offset, nbytes) per chunk, then a CRC32C) has
    # no empty entry, the fill-only image's included.
    assert back.nchunks_initialized == back.nchunks == n
    shard = objects["logits/c/0/0/0/0/0"]
    index = np.frombuffer(shard[-(16 * n + 4) : -4], np.uint64).reshape(n, 2)
    assert (index != np.iinfo(np.uint64).max).all(), index
    np.testing.assert_array_equal(back[:], stored)  # the written slots hold what was written (NaN = NaN)
    decoded = decode_logits(back[:], precision)
    # The trainer decodes the stored bytes on its device: the same values, NaN fill included.
    np.testing.assert_array_equal(decode_logits(torch.from_numpy(back[:]), precision).numpy(), decoded)

    def sig(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))

    bound = UINT8_MAX_PROB_ERROR if precision == "uint8_sigmoid" else FP16_MAX_PROB_ERROR
    for i in range(n):
        if n_prompts[i]:
            err = np.abs(sig(decoded[i, : n_prompts[i]]) - sig(logits[i, : n_prompts[i]])).max()
            assert err <= bound + 1e-7, (precision, err, bound)
            assert err > bound / 4, "the bound should be close to what happens, not loose"
        if precision == "fp16":
            assert np.isnan(decoded[i, n_prompts[i] :]).all()
        else:
            assert (back[i, n_prompts[i] :] == 0).all()


def test_commit_record_round_trip_and_unparseable_records(tmp_path):
    storage = StoreRoot(str(tmp_path))
    record = CommitRecord(
        kind="clip",
        source="sample",
        shard="00000",
        unit="00000",
        input=InputRef(url="s3://b/00000.tar", size=123, etag="abc"),
        n_input=10,
        n_stored=9,
        n_errors=1,
        rows={"views": 36, "errors": 1},
        files=[storage.write_bytes("clip/sample/00000/p0000000-000000000000-00000000.parquet", b"x")],
        policy_hash="p" * 64,
        parts=["p0000000-000000000000-00000000"],
    )
    create_commit(storage, record)
    assert read_commit(storage, "clip", "sample", "00000") == record
    (tmp_path / layout.commit_path("clip", "sample", "00001")).write_text('{"kind": "clip", "sou')
    assert read_commit(storage, "clip", "sample", "00001") is None
    with pytest.raises(ValueError, match="9 stored \\+ 0 errors != 10 input"):
        CommitRecord(
            kind="clip",
            source="s",
            shard="u",
            unit="u",
            input=InputRef("u", 1),
            n_input=10,
            n_stored=9,
            n_errors=0,
            rows={},
            files=[],
            policy_hash="p",
            parts=[],
        )


PART = "p0000000-000000000000-0000test"


def write_clip_unit(storage: StoreRoot, manifest: Manifest, shard: str, commit: bool) -> None:
    rows = clip_rows(3, 2, shard)
    entry = storage.write_bytes(
        layout.part_path("clip", "sample", shard, PART),
        parquet_bytes(pa.Table.from_pylist(rows, schema=clip_views_schema(D))),
    )
    if commit:
        create_commit(
            storage,
            CommitRecord(
                kind="clip",
                source="sample",
                shard=shard,
                unit=shard,
                input=InputRef(f"/data/{shard}.tar", 100),
                n_input=3,
                n_stored=3,
                n_errors=0,
                rows={"views": len(rows)},
                files=[entry],
                policy_hash=manifest.policy_hash,
                parts=[PART],
            ),
        )


@pytest.fixture(scope="module")
def tiny_clip_fingerprint(tiny_teachers):
    return load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"])).fingerprint


def test_reader_sees_only_committed_units(tmp_path, job_yaml, tiny_clip_fingerprint):
    cfg = load_job_config(str(job_yaml()))
    storage = StoreRoot(str(tmp_path / "store"))
    manifest = ensure_manifest(storage, clip_manifest(cfg, tiny_clip_fingerprint, "fp32", "cpu"))
    write_clip_unit(storage, manifest, "00000", commit=True)
    write_clip_unit(storage, manifest, "00001", commit=False)  # a killed attempt's leftover
    store = open_store(str(tmp_path / "store"))
    assert [c.unit for c in store.commits("clip")] == ["00000"]
    assert store.committed_files("clip", "views") == [f"{storage.url}/clip/sample/00000/{PART}.parquet"]
    table = store.read_table("clip", "views")
    assert table.num_rows == 6
    assert set(table.column("shard").to_pylist()) == {"00000"}
    assert store.manifest("clip").must_match["teacher"]["output"]["embed_dim"] == D
    summary = store.summary()["clip"]
    assert (summary["units"], summary["samples_stored"], summary["rows"]) == (1, 3, {"views": 6})
    # A commit record from another policy is not counted.
    write_clip_unit(storage, Manifest("clip", {"other": 1}), "00002", commit=True)
    assert [c.unit for c in store.commits("clip")] == ["00000"]


def test_mismatched_fingerprint_or_policy_is_refused_naming_the_field(tmp_path, job_yaml, tiny_clip_fingerprint):
    cfg = load_job_config(str(job_yaml()))
    storage = StoreRoot(str(tmp_path / "store"))
    first = ensure_manifest(storage, clip_manifest(cfg, tiny_clip_fingerprint, "fp32", "cpu"))
    again = ensure_manifest(storage, clip_manifest(cfg, tiny_clip_fingerprint, "fp32", "host-b"))
    assert again == first
    assert json.loads((tmp_path / "store/clip/_manifest.json").read_text())["recorded"]["device"] == "cpu"

    other_weights = load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=None, init_seed=7)).fingerprint
    with pytest.raises(
        ManifestMismatch,
        match=r"teacher.weights_sha256: store has 778f[0-9a-f]{8}\.\.\., job has "
        r"[0-9a-f]{12}\.\.\.; write these targets to a new store",
    ):
        ensure_manifest(storage, clip_manifest(cfg, other_weights, "fp32", "cpu"))
    k8 = load_job_config(str(job_yaml()), ["clip.views=8"])
    with pytest.raises(ManifestMismatch, match=r"policy.views: store has 4, job has 8"):
        ensure_manifest(storage, clip_manifest(k8, tiny_clip_fingerprint, "fp32", "cpu"))
    with pytest.raises(ManifestMismatch, match=r"compute_dtype: store has fp32, job has bf16;"):
        ensure_manifest(storage, clip_manifest(cfg, tiny_clip_fingerprint, "bf16", "cuda"))


def test_a_store_of_another_schema_version_is_refused_in_one_line(tmp_path, job_yaml, tiny_clip_fingerprint):
    cfg = load_job_config(str(job_yaml()))
    ensure_manifest(StoreRoot(str(tmp_path / "store")), clip_manifest(cfg, tiny_clip_fingerprint, "fp32", "cpu"))
    path = tmp_path / "store/clip/_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["must_match"]["schema_version"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        StoreError, match=r"_manifest.json: schema version 1; this code reads and writes version 2 \(write to"
    ):
        open_store(str(tmp_path / "store")).manifest("clip")
    with pytest.raises(StoreError, match="schema version 1"):
        ensure_manifest(StoreRoot(str(tmp_path / "store")), clip_manifest(cfg, tiny_clip_fingerprint, "fp32", "cpu"))


def test_unreachable_store_is_one_line(tmp_path):
    with pytest.raises(StoreError, match="cannot be reached .*; expected an existing store you can read$"):
        open_store(str(tmp_path / "does-not-exist"))  # a reader: nothing to write
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StoreError, match="expected a directory or bucket you can write to$"):
        StoreRoot(str(blocked / "store")).check_reachable(create=True)


def test_an_all_fill_chunk_is_still_written(tmp_path):
    storage = StoreRoot(str(tmp_path))
    saturated = encode_logits(np.full((2, 2, 1, 256, 256), -40.0, np.float32), "uint8_sigmoid")
    assert (saturated == 0).all()  # equal to the fill value everywhere
    for key, data in logits_group_objects(saturated, "uint8_sigmoid").items():
        storage.write_bytes(f"u.zarr/{key}", data)
    assert (open_logits(storage, "u.zarr")[:] == 0).all()
    # Zeros read back prove nothing alone: a missing chunk reads as the fill value, 0, too. The
    # part's shard object must exist, and read through a copy of the array whose fill value is 255
    # (a value the saturated logits never take), its chunks must still give what was written.
    assert storage.exists("u.zarr/logits/c/0/0/0/0/0"), "no shard object for the part's images"
    shutil.copytree(tmp_path / "u.zarr", tmp_path / "probe.zarr")
    meta_file = tmp_path / "probe.zarr/logits/zarr.json"
    meta = json.loads(meta_file.read_text())
    assert meta["fill_value"] == 0
    meta_file.write_text(json.dumps({**meta, "fill_value": 255}))
    probe = open_logits(storage, "probe.zarr")
    assert probe.fill_value == 255
    back = probe[:]
    assert np.array_equal(back, saturated), (
        f"images whose chunks read as the fill value: {[i for i in range(2) if (back[i] == 255).all()]}"
    )
