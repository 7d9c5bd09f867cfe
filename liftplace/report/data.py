"""What the report reads: the service's records (through `liftplace.client`), bench CSVs, real-vs-real FIDs.

Nothing here computes a section's numbers; it fetches them as the service (or the CSV) gives them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liftplace.client import ServiceClient, find_study, study_jobs
from liftplace.report.compute import RealVsReal


class ReportError(RuntimeError):
    """A section cannot be generated from what it was given (a study the service lacks, a missing file, …)."""


class ReportSource:
    """The service's records a section reads, by way of a `ServiceClient`."""

    def __init__(self, client: ServiceClient):
        self.client = client

    def study(self, key: str) -> dict[str, Any]:
        """The study named `key` (or whose id is `key`)."""
        found = find_study(self.client, key, match_id=True)
        if found is None:
            raise ReportError(f"no study named {key!r} on the service {self.client.base_url}")
        return found

    def table(self, study_id: int) -> dict[str, Any]:
        """The study's Table-6 grid (``/api/studies/{id}/table``, JSON)."""
        return self.client.get(f"/api/studies/{study_id}/table")

    def jobs(self, study_id: int) -> list[dict[str, Any]]:
        return study_jobs(self.client, study_id)

    def teachers(self) -> list[dict[str, Any]]:
        return self.client.get("/api/teachers")

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.get(f"/api/jobs/{job_id}")


@dataclass(frozen=True)
class StudyData:
    """A study as the service has it: its record, its grid and its jobs."""

    study: dict[str, Any]
    table: dict[str, Any]
    jobs: list[dict[str, Any]]


def fetch_study(source: ReportSource, key: str, jobs: bool = True) -> StudyData:
    """The study named (or numbered) `key`; `jobs=False` skips the job list (a comparison needs only the grid)."""
    study = source.study(key)
    return StudyData(study, source.table(study["id"]), source.jobs(study["id"]) if jobs else [])


@dataclass(frozen=True)
class TeacherData:
    """A teacher's service record ({} when the service does not list it) and its training job ({} for none)."""

    name: str
    record: dict[str, Any]
    job: dict[str, Any]


def fetch_teachers(source: ReportSource, names: list[str]) -> list[TeacherData]:
    known = {t["name"]: t for t in source.teachers()}
    out = []
    for name in names:
        record = known.get(name, {})
        out.append(TeacherData(name, record, source.job(record["job_id"]) if record.get("job_id") else {}))
    return out


def real_vs_real(resolution: int, num_samples: int, seed: int = 0) -> RealVsReal:
    """Real-vs-real FIDs of the digits (digits features) at `resolution` pixels a side.

    `halves`: two disjoint random halves of the digits (fresh samples of the same distribution);
    `subset`: `num_samples` real digits against the whole set they belong to. Loads torch.
    """
    import torch

    torch.set_num_threads(1)
    from liftplace.data import load_digits
    from liftplace.fid import compute_fid

    data = load_digits(resolution)
    idx = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    half = data.shape[0] // 2
    return RealVsReal(resolution=resolution, halves=compute_fid(data[idx[:half]], data[idx[half:]]).fid,
                      halves_n=half, subset=compute_fid(data[idx[:num_samples]], "digits").fid,
                      subset_n=min(num_samples, data.shape[0]))


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV (of ``bench/convergence.py``) as dicts of strings."""
    if not path.is_file():
        raise ReportError(f"no such CSV: {path}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
