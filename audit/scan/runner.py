"""Finding the models to scan and running them: in this process, a process pool, or Ray.

Models are independent jobs. Results stream back as they finish (``on_result``) and are
appended to a journal beside the report, so that a scan cut short can be resumed: a model
whose sha256 and effective policy match a journalled (or reported) result is not scanned
again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError
from audit.graphs.io import sha256_file
from audit.scan.job import VERDICTS, fails, scan_model
from audit.scan.policy import ModelPolicy

Record = dict
OnResult = Callable[[Record], None]


class NothingToScan(AuditError):
    """PATH arguments that hold no model: exit code 3."""

    exit_code = 3


@dataclass(frozen=True)
class Job:
    path: str
    policy: ModelPolicy
    pictures: str | None = None     # folder for each model's detect report and flagged triggers


def find_models(paths: list[str]) -> list[str]:
    """Every .onnx file named or found (recursively, hidden folders skipped) under the paths,
    in a stable order and each once. A path that does not exist is an AuditError (exit 2);
    no model at all is NothingToScan (exit 3)."""
    found: dict[str, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise AuditError(f"{p}: no such file or folder")
        if p.is_dir():
            for f in sorted(p.rglob("*.onnx")):
                rel = f.relative_to(p).parts
                if f.is_file() and not any(part.startswith(".") for part in rel):
                    found.setdefault(str(f), None)
        elif p.is_file():
            found.setdefault(str(p), None)
        else:   # a pipe or a device is never opened
            raise AuditError(f"{p}: not a regular file or a folder")
    if not found:
        raise NothingToScan(f"nothing to scan: no .onnx file in {', '.join(map(str, paths))}")
    return list(found)


class Journal:
    """Results appended one JSON line each as models finish (``<report>.partial``); removed
    once the report is written."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None

    def append(self, rec: Record) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self, remove: bool) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)


def previous_results(*sources: Path | None) -> dict[tuple[str, str], Record]:
    """(sha256, policy key) -> record, from a JSON report and journal lines (later wins).
    Unreadable sources give nothing: they are the scan's own outputs, rewritten at its end."""
    out = {}
    for src in sources:
        if src is None or not src.is_file():
            continue
        try:
            text = src.read_text(encoding="utf-8")
            if src.suffix == ".partial":
                recs = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                recs = json.loads(text).get("results", [])
        except (OSError, ValueError, AttributeError):
            continue
        for r in recs:
            if isinstance(r, dict) and r.get("sha256") and r.get("policy_key"):
                out[(r["sha256"], r["policy_key"])] = r
    return out


def reusable(jobs: list[Job], previous: dict) -> tuple[list[Job], list[Record]]:
    """The jobs still to run and the previous records that answer the others (the same model
    bytes under the same settings: a model that could not be scanned is not tried again)."""
    todo, done = [], []
    for job in jobs:
        try:
            key = (sha256_file(job.path), job.policy.key())
        except OSError:
            key = None
        rec = previous.get(key) if key else None
        if rec is not None and rec.get("verdict") in VERDICTS:
            done.append({**rec, "path": job.path, "resumed": True,
                         "fails": fails(rec["verdict"], job.policy.fail_on)})
        else:
            todo.append(job)
    return todo, done


def run_local(jobs: list[Job], workers: int, on_result: OnResult, device: str = "cpu") -> None:
    """Each job in a pool of worker processes (one torch and onnxruntime thread each); one
    worker runs the jobs in this process."""
    if workers <= 1 or len(jobs) <= 1:
        _single_threaded()
        for job in jobs:
            on_result(scan_model(job.path, job.policy, device, job.pictures))
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")   # no fork of a process that holds torch or onnxruntime threads
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                             initializer=_single_threaded) as pool:
        pending = {pool.submit(scan_model, j.path, j.policy, device, j.pictures): j for j in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                try:
                    on_result(fut.result())
                except BrokenProcessPool as exc:   # a worker killed (out of memory, a crash)
                    on_result(lost(job, exc))


def lost(job: Job, exc: BaseException) -> Record:
    """The record of a job whose worker died before it could report."""
    from audit.errors import one_line
    from audit.scan.job import empty_record

    rec = empty_record(job.path, job.policy)
    rec["error"] = f"the worker scanning it died: {type(exc).__name__}: {one_line(exc)}"
    rec["fails"] = fails("error", job.policy.fail_on)
    return rec


def _single_threaded() -> None:
    """A worker's thread budget: one torch thread, one onnxruntime thread per session."""
    import torch

    from audit.graphs import runtime

    torch.set_num_threads(1)
    runtime.SESSION_THREADS = 1


def run_ray(jobs: list[Job], address: str | None, on_result: OnResult,
            gpu_share: float = 0.25) -> None:
    """One Ray task per model, results collected with ray.wait as they finish. address None
    starts a local Ray runtime; "auto" or host:port (or ray://...) joins a cluster. Where the
    cluster has GPUs each task asks for gpu_share of one and runs on CUDA, onnxruntime's arena
    limited to that share of the GPU's memory."""
    try:
        import ray
    except ImportError:
        raise AuditError("--ray needs Ray: pip install 'audit-laundering[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:   # ConnectionError and Ray's own
            raise AuditError(f"--ray: cannot connect to Ray at {address or 'a new local runtime'}: "
                             f"{type(exc).__name__}: {exc}") from None
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        share = gpu_share if gpus > 0 else 0.0
        task = ray.remote(num_cpus=1, num_gpus=share)(_ray_task)
        pending = {task.remote(j.path, j.policy, share, j.pictures): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    on_result(ray.get(ref))
                except ray.exceptions.RayError as exc:   # the task or its worker died
                    on_result(lost(job, exc))
    finally:
        if started:
            ray.shutdown()


def _ray_task(path: str, policy: ModelPolicy, gpu_share: float, pictures: str | None) -> Record:
    from audit.graphs import runtime

    _single_threaded()
    device = "cpu"
    if gpu_share > 0 and runtime.cuda_usable():
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        runtime.CUDA_MEM_LIMIT = int(total * gpu_share)
        device = "cuda"
    return scan_model(path, policy, device, pictures)
