"""The CLIP job's ceiling: the job with a nearly free teacher against a one-process loop doing the
same work with the same primitives, in one run.

    python bench/pipeline_ceiling.py [--samples 10000] [--shard-samples 10000] [--unit-sizes 1000 10000]
                                     [--views 10] [--batch 32] [--work DIR] [--set KEY=VALUE ...]

inputs:  webdataset shards of JPEGs (longest side 384-512 px, quality 90) cut at random from
         scikit-image photographs, written once under --work and reused.
teacher: open_clip `samclip-tiny-clip` (2 layers, width 64, patch 32), random init, fp32 on CPU.
job:     `python -m pipeline.materialize` on a local Ray of 2 CPUs (read tasks, one teacher actor
         that decodes and renders on a thread of its own) once per unit size, each into a fresh
         store. From its report: samples/s over the steady window (first target to last commit;
         start-up apart) and from the dataset's start, driver bytes per sample, mean commit latency.
         Every 0.5 s psutil books the CPU of each process under the job's (a local Ray's daemons and
         workers are its descendants) since the last look to the stage its title names now, as Ray
         reuses workers: `ray::...FlatMap...` read, `ray::MapWorker(...)` actor (decode, render,
         teacher, part writer), the job's process driver (Ray Data's executor runs there), the rest
         (daemons, idle workers, Ray's actors) ray system. CPU per sample from the dataset's start
         to the last commit: the read task runs ahead of the first target, so the steady window
         would miss part of its work. Peak driver RSS over the run.
one process: iter_tar_samples, render_sample (decode_image, sample_views, render_view, view_hash),
         ClipTeacherStage.embed per batch (1 torch thread), one views file per unit of the smallest
         size (storage_schemas.store.clip_views); from the first sample to the last file.
object store: the read stage's rows for these shards, made by its own code in this process, as
         Arrow tables of 256 rows (what Ray's blocks hold), against the JPEG bytes they carry.
Targets (issues): job >= 1.2x one process; driver CPU <= 20 us and traffic <= 64 bytes per sample;
a largest unit's commit <= 1.5x a smallest's; object-store bytes <= 1.2x the encoded image. The
driver's CPU is also given per second: Ray Data's executor loop polls at a rate of its own,
whatever flows. Figures a job's report lacks print n/a.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict

# Appended, not prepended: a checkout named by PYTHONPATH (another worktree) is the one measured.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import psutil
import pyarrow as pa
import torch
import yaml

import pipeline
from pipeline.config import ClipTeacherConfig, ViewPolicy
from pipeline.materialize.clip_targets import ClipTeacherStage, RenderSpec, read_clip_shard, render_sample
from pipeline.materialize.sources import InputShard, shard_name
from pipeline.materialize.units import shard_task
from pipeline.sample.corpus import encode_jpeg, load_photo, random_variant
from storage_schemas.pixels.decode import DEFAULT_MAX_PIXELS
from storage_schemas.pixels.tar_samples import iter_tar_samples
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.plumbing.typed_config import add_set_argument
from storage_schemas.store.clip_views import ClipViews, views_parquet
from storage_schemas.store.root import StoreRoot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field")
SOURCE, ARCH, SEED = "bench", "samclip-tiny-clip", 0
STAGES = ("read", "actor", "driver", "ray system")
TARGETS = {
    "speedup": (">= 1.2", lambda v: v >= 1.2),
    "driver_us": ("<= 20", lambda v: v <= 20),
    "driver_bytes": ("<= 64", lambda v: v <= 64),
    "commit_ratio": ("<= 1.5", lambda v: v <= 1.5),
    "wire_ratio": ("<= 1.2", lambda v: v <= 1.2),
}
ROWS = [
    ("samples/s, steady window", "rate", "{:.1f}"),
    ("  job / one process", "speedup", "{:.2f}"),
    ("samples/s, dataset start to last commit", "rate_all", "{:.1f}"),
    ("steady window s", "steady", "{:.1f}"),
    ("start-up s (launch to first target)", "startup", "{:.1f}"),
    ("driver CPU us/sample", "driver_us", "{:.1f}"),
    ("  driver CPU ms per second", "driver_rate", "{:.1f}"),
    ("driver bytes/sample", "driver_bytes", "{:.0f}"),
    ("object-store bytes/sample (read rows)", "wire", "{:.0f}"),
    ("  encoded image bytes/sample", "jpeg", "{:.0f}"),
    ("  object store / encoded image", "wire_ratio", "{:.3f}"),
    ("commit latency s per unit (mean)", "commit", "{:.3f}"),
    ("  largest unit / smallest", "commit_ratio", "{:.2f}"),
    ("peak driver RSS MiB", "rss", "{:.0f}"),
    ("  private (less shared pages)", "private", "{:.0f}"),
    ("CPU s before the dataset's start", "startup_cpu", "{:.1f}"),
]
ROWS += [(f"CPU ms/sample {s}", f"cpu {s}", "{:.2f}") for s in STAGES + ("total",)]


def make_shards(work: str, samples: int, shard_samples: int) -> list[str]:
    """Shards of `shard_samples` samples (the last may be short), made once per size and reused."""
    directory = os.path.join(work, f"shards-{samples}-{shard_samples}")
    os.makedirs(directory, exist_ok=True)
    photos, paths = None, []
    for shard, start in enumerate(range(0, samples, shard_samples)):
        paths.append(os.path.join(directory, f"{shard:05d}.tar"))
        if not os.path.exists(paths[-1]):
            photos = photos or [load_photo(name) for name in PHOTOS]
            rng = np.random.default_rng(shard)
            with (
                open(paths[-1] + ".part", "wb") as f,
                tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
            ):
                for i in range(start, min(samples, start + shard_samples)):
                    jpg = encode_jpeg(random_variant(photos[i % len(photos)], rng, (384, 512)), quality=90)
                    for name, data in ((f"{i:09d}.jpg", jpg), (f"{i:09d}.txt", f"photograph {i}".encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            os.replace(paths[-1] + ".part", paths[-1])  # a killed run leaves no short shard to reuse
    return paths


def stage_and_label(is_driver: bool, cmdline: list[str]) -> tuple[str, str]:
    """A process's stage, and a short name: its Ray title less the method, or its program or script."""
    title = cmdline[0].split()[0] if cmdline and cmdline[0].startswith("ray::") else ""
    if is_driver:
        return "driver", "materialize"
    if title:
        stage = "actor" if "MapBatches" in title else "read" if "FlatMap" in title else "ray system"
        return stage, re.sub(r"\.\w+$", "", title)
    names = [os.path.basename(a) for a in cmdline if not a.startswith("-")] or ["?"]
    return "ray system", names[1] if names[0].startswith("python") and len(names) > 1 else names[0]


class TreeWatch:
    """Looks at a process and all its descendants: each one's CPU (user + system) since the previous
    look is booked to the stage its title names now; the root's peak RSS."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.last: dict[tuple[int, float], tuple[float, float]] = {}  # (pid, created) -> (time, cpu s)
        self.booked: list[tuple[float, float, str, float]] = []  # (from, to, stage, cpu s)
        self.titles: dict[str, set[str]] = defaultdict(set)
        self.peak_rss = self.peak_private = 0  # private: less pages shared (object store, libraries)

    def look(self) -> None:
        now = time.time()
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                with p.oneshot():
                    times, cmdline, mem, key = p.cpu_times(), p.cmdline(), p.memory_info(), (p.pid, p.create_time())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            stage, name = stage_and_label(p.pid == self.root.pid, cmdline)
            since, before = self.last.get(key, (key[1], 0.0))
            self.booked.append((since, now, stage, times.user + times.system - before))
            self.last[key] = (now, times.user + times.system)
            self.titles[stage].add(name)
            if p.pid == self.root.pid:
                self.peak_rss, self.peak_private = (
                    max(self.peak_rss, mem.rss),
                    max(self.peak_private, mem.rss - mem.shared),
                )

    def cpu_between(self, start: float, end: float) -> Counter:
        """CPU seconds per stage in [start, end], looks that straddle it prorated."""
        out = Counter()
        for a, b, stage, cpu in self.booked:
            if min(b, end) > max(a, start):
                out[stage] += cpu * (min(b, end) - max(a, start)) / (b - a)
        return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_job(work: str, shards: list[str], unit_size: int, args) -> tuple[dict, TreeWatch, float, float]:
    """One materialize run into a fresh store: (its clip report, the watch, launch time, report time)."""
    store, report_path = os.path.join(work, f"store-{unit_size}"), os.path.join(work, f"report-{unit_size}.json")
    shutil.rmtree(store, ignore_errors=True)
    job = {
        "store": {"url": store},
        "compute_dtype": "fp32",
        "sources": [{"name": SOURCE, "kind": "clip", "shards": shards, "unit_size": unit_size}],
        "clip": {"teacher": {"arch": ARCH, "pretrained": None, "init_seed": SEED}, "views": args.views},
        "ray": {"num_cpus": 2, "teacher_actors": 1, "cpus_per_actor": 1, "batch_size": args.batch},
    }
    job_path = os.path.join(work, f"job-{unit_size}.yaml")
    with open(job_path, "w") as f:
        yaml.safe_dump(job, f)
    # The job runs the code this process imports; Ray's workers inherit PYTHONPATH from the driver.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pipeline.materialize", job_path, "--report", report_path]
    launched = time.time()
    with open(os.path.join(work, f"job-{unit_size}.log"), "w") as log:
        proc = subprocess.Popen(
            cmd + [a for kv in args.overrides for a in ("--set", kv)],
            env=env,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        watch = TreeWatch(proc.pid)
        while proc.poll() is None:
            watch.look()
            time.sleep(0.5)
    if proc.returncode != 0:
        sys.exit(f"the job exited {proc.returncode}; its output is in {log.name}")
    with open(report_path) as f:
        report = next((r for r in json.load(f).get("reports", []) if r.get("kind") == "clip"), {})
    return report, watch, launched, os.path.getmtime(report_path)  # written right after the last commit


def job_figures(report: dict, watch: TreeWatch, launched: float, end: float, unit_size: int) -> dict:
    """The table's figures for one run; None where the report lacks a field."""
    n, seconds, first = report.get("samples"), report.get("seconds"), report.get("first_target_seconds")
    steady = seconds - first if seconds is not None and first is not None else None
    figures = dict(
        rate=ratio(n, steady),
        rate_all=ratio(n, seconds),
        steady=steady,
        startup=end - steady - launched if steady else None,
        driver_bytes=ratio(report.get("driver_bytes"), n),
        rss=watch.peak_rss / 2**20,
        private=watch.peak_private / 2**20,
    )
    commits = [s for k, s in report.get("commit_seconds") or [] if k == unit_size]
    figures["commit"] = sum(commits) / len(commits) if commits else None
    if seconds:
        start = end - seconds  # the dataset's start
        cpu = watch.cpu_between(start, end)
        figures |= dict(startup_cpu=sum(watch.cpu_between(0, start).values()), driver_us=ratio(cpu["driver"] * 1e6, n))
        # Per second as well as per sample: Ray Data's executor loop in the driver polls at a rate
        # of its own, so its CPU per sample falls as more samples flow (compare runs at other --views).
        figures["driver_rate"] = cpu["driver"] * 1e3 / seconds
        figures |= {f"cpu {s}": ratio(cpu[s] * 1e3, n) for s in STAGES}
        figures["cpu total"] = ratio(sum(cpu.values()) * 1e3, n)
    return figures


def chunks(items, n: int):
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def rendered(url: str, spec: RenderSpec, unit_size: int):
    """The actor's render work, one sample after the other: K views rendered (uint8) and hashed."""
    shard = shard_name(url)
    for sample in iter_tar_samples(url):
        pixels = np.zeros((spec.views, spec.size, spec.size, 3), np.uint8)
        r = render_sample(spec, SampleId(SOURCE, shard, sample.key), sample.image()[1], pixels)
        yield dict(
            key=sample.key,
            sample_index=sample.index % unit_size,
            width=r.width,
            height=r.height,
            crops=r.crops,
            flips=r.flips,
            hashes=r.hashes,
            pixels=pixels,
        )


def one_process(work: str, shards: list[str], unit_size: int, args) -> dict:
    torch.set_num_threads(1)
    out = os.path.join(work, "one-process")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    stage = ClipTeacherStage(
        ClipTeacherConfig(arch=ARCH, pretrained=None, init_seed=SEED), None, StoreRoot(out), "fp32", threads=1
    )
    spec = stage.spec = RenderSpec.of(
        stage.teacher.fingerprint.preprocess, SEED, args.views, ViewPolicy(), DEFAULT_MAX_PIXELS
    )
    dim = stage.teacher.embed_dim
    cpu0, t0, n = time.process_time(), time.perf_counter(), 0
    for url in shards:
        for unit, samples in enumerate(chunks(rendered(url, spec, unit_size), unit_size)):
            emb = np.concatenate(
                [stage.embed(np.concatenate([s.pop("pixels") for s in batch])) for batch in chunks(samples, args.batch)]
            ).reshape(len(samples), args.views, dim)
            column = lambda name, dtype=None: np.array([s[name] for s in samples], dtype)  # noqa: E731
            views = ClipViews(
                column("sample_index", np.int32),
                [s["key"] for s in samples],
                column("width", np.int32),
                column("height", np.int32),
                column("crops"),
                column("flips"),
                column("hashes", object),
                emb,
            )
            with open(os.path.join(out, f"{shard_name(url)}-{unit:05d}.parquet"), "wb") as f:
                f.write(views_parquet(views, SOURCE, shard_name(url)))
            n += len(samples)
    seconds = time.perf_counter() - t0
    return {
        "rate": n / seconds,
        "rate_all": n / seconds,
        "steady": seconds,
        "cpu total": (time.process_time() - cpu0) * 1e3 / n,
    }


def wire_bytes(shards: list[str], unit_size: int) -> dict:
    """Object-store bytes per sample of the read stage's rows, and the JPEG bytes they carry."""
    storage = StoreRoot(tempfile.mkdtemp(prefix="bench-wire-"))
    rows_bytes = jpeg = n = 0
    for url in shards:
        shard = InputShard(SOURCE, "clip", url, shard_name(url), os.path.getsize(url), None, {}, unit_size)
        for block in chunks(read_clip_shard(shard_task(shard, [], storage, write_index=False)), 256):
            rows_bytes += pa.Table.from_pylist(block).nbytes
            jpeg += sum(len(r["image"]) for r in block)
            n += sum(r["status"] == "ok" for r in block)
    return {"wire": rows_bytes / n, "jpeg": jpeg / n, "wire_ratio": rows_bytes / jpeg}


def print_table(jobs: dict[int, dict], loop: dict, titles: dict[str, set[str]]) -> None:
    units = list(jobs)
    for j in jobs.values():
        j["speedup"] = ratio(j["rate"], loop["rate"])
    if len(units) > 1:
        jobs[units[-1]]["commit_ratio"] = ratio(jobs[units[-1]]["commit"], jobs[units[0]]["commit"])
    line = "{:<40}" + "{:>16}" * (len(units) + 1) + "  {:<8} {}"
    print(line.format("", *[f"job unit={u}" for u in units], "one process", "target", ""))
    for name, key, fmt in ROWS:
        values = [c.get(key) for c in [*jobs.values(), loop]]
        target, ok = TARGETS.get(key, ("", None))
        judged = [ok(v) for v in values if v is not None] if ok else []
        verdict = ("met" if all(judged) else "MISSED") if judged else ("n/a" if ok else "")
        print(line.format(name, *["n/a" if v is None else fmt.format(v) for v in values], target, verdict))
    for stage, names in sorted(titles.items()):
        print(f"  processes booked to {stage}: {', '.join(sorted(names))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10000, help="samples in all")
    parser.add_argument("--shard-samples", type=int, default=10000, help="samples per shard")
    parser.add_argument("--unit-sizes", type=int, nargs="+", default=[1000, 10000], help="one job run each")
    parser.add_argument("--views", type=int, default=10, help="K views per sample")
    parser.add_argument("--batch", type=int, default=32, help="samples per teacher batch")
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "samclip-bench-ceiling"),
        help="shards (kept and reused), stores, job configs, logs, reports",
    )
    add_set_argument(parser, "a job config override, passed to every job run")
    args = parser.parse_args()
    shards = make_shards(args.work, args.samples, args.shard_samples)
    print(
        f"code {REPO}; {args.samples} samples in {len(shards)} shards, K={args.views}, teacher {ARCH} "
        f"(random init, fp32), batch {args.batch} samples; job: local Ray with 2 CPUs; one process: 1 torch thread"
    )
    jobs, titles = {}, defaultdict(set)
    for u in sorted(args.unit_sizes):
        report, watch, launched, end = run_job(args.work, shards, u, args)
        jobs[u] = job_figures(report, watch, launched, end, u)
        for stage, names in watch.titles.items():
            titles[stage] |= names
    wire = wire_bytes(shards, min(args.unit_sizes))
    for figures in jobs.values():
        figures |= wire
    print_table(jobs, one_process(args.work, shards, min(args.unit_sizes), args), titles)


if __name__ == "__main__":
    main()
