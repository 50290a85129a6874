"""`audit scan`: inspect, detect and verify many models; one verdict per model, one exit code.

Scan.prepare finds the models and their policies (and, with resume, the results already
there), Scan.run scans the rest (audit.scan.runner: this process, a process pool or Ray),
Scan.write writes the reports (audit.scan.formats).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from audit.errors import AuditError
from audit.paths import Output, atomic_write, output_file, output_folder
from audit.scan import formats
from audit.scan.job import exit_code
from audit.scan.policy import Policy, load_policy
from audit.scan.runner import Job, Journal, find_models, previous_results, reusable, run_local, run_ray

__all__ = ["Scan", "scan"]


@dataclass
class Scan:
    models: list[str]
    policy: Policy
    jobs: list[Job]
    outputs: list[tuple[str, str]]               # (path, format)
    stdout_format: str = "text"
    todo: list[Job] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @classmethod
    def prepare(cls, paths: list[str], policy_file: str | None = None, *, data: str | None = None,
                fail_on: str | None = None, fmt: str | None = None,
                outputs: list[str] | None = None, resume: bool = False) -> Scan:
        outputs = outputs or []
        policy = load_policy(policy_file)
        models = find_models(paths)
        override = {"fail_on": fail_on} if fail_on else {}
        outs = [(o, formats.output_format(o, fmt, len(outputs) > 1)) for o in outputs]
        pictures = str(Path(outs[0][0]).resolve().with_suffix("")) + "_triggers" if outs else None
        defaults = {"data": str(Path(data).resolve()) if data else None}
        jobs = [Job(m, replace(policy.for_model(Path(m), defaults), **override), pictures)
                for m in models]
        scan = cls(models, policy, jobs, outs, stdout_format=fmt or "text")
        scan.todo = list(jobs)
        if resume:
            json_outs = [Path(o) for o, f in outs if f == "json"]
            if not outs:
                raise AuditError("--resume needs -o: the scan reads back the results it wrote there")
            scan.todo, scan.records = reusable(jobs, previous_results(*json_outs, scan.journal_path))
        return scan

    @property
    def journal_path(self) -> Path | None:
        return Path(self.outputs[0][0] + ".partial") if self.outputs else None

    def output_checks(self) -> list[Output]:
        outs = [output_file(o, f"{f} report") for o, f in self.outputs]
        if self.journal_path is not None:
            outs.append(output_file(self.journal_path, "scan journal"))
        if self.jobs and self.jobs[0].pictures:
            outs.append(output_folder(self.jobs[0].pictures, None, "trigger pictures folder"))
        return outs

    def data_inputs(self) -> list[str]:
        return sorted({p for j in self.jobs for p in [j.policy.data, *(w.triggers for w in j.policy.watermarks)]
                       if p is not None})

    def files(self) -> list[str]:
        fs = {v for j in self.jobs for w in j.policy.watermarks if w.vanilla
              for v in ([w.vanilla] if isinstance(w.vanilla, str) else w.vanilla)}
        fs |= {j.policy.input_spec for j in self.jobs if j.policy.input_spec}
        return sorted(fs | ({self.policy.source} if self.policy.source else set()))

    def run(self, *, workers: int = 1, ray_address: str | None = None, device: str = "cpu",
            on_result=None) -> list[dict]:
        journal = Journal(self.journal_path)

        def collect(rec: dict) -> None:
            self.records.append(rec)
            journal.append(rec)
            if on_result is not None:
                on_result(rec)

        try:
            if ray_address is not None:
                run_ray(self.todo, None if ray_address == "local" else ray_address, collect)
            else:
                run_local(self.todo, workers, collect, device)
        finally:
            journal.close(remove=False)
        order = {m: i for i, m in enumerate(self.models)}
        self.records.sort(key=lambda r: order.get(r["path"], len(order)))
        return self.records

    @property
    def exit_code(self) -> int:
        return exit_code(self.records)

    def meta(self) -> dict:
        return {"policy": self.policy.source, "policy_sha256": self.policy.sha256,
                "summary": formats.summary(self.records, self.exit_code)}

    def print(self, echo) -> None:
        echo(formats.render(self.stdout_format if not self.outputs else "text", self.records,
                            self.meta()), nl=False)

    def write(self) -> None:
        meta = self.meta()
        for path, fmt in self.outputs:
            text = formats.render(fmt, self.records, meta)
            atomic_write(path, lambda fh, t=text: fh.write(t.encode("utf-8")))
        if self.journal_path is not None:
            self.journal_path.unlink(missing_ok=True)


def scan(paths: list[str], policy_file: str | None = None, **kwargs) -> list[dict]:
    """Python API: scan the models under paths; returns the records (see docs/formats.md)."""
    run_opts = {k: kwargs.pop(k) for k in ("workers", "ray_address", "device") if k in kwargs}
    job = Scan.prepare(paths, policy_file, **kwargs)
    return job.run(**run_opts)
