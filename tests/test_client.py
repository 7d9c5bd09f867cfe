"""`liftplace.client`'s paged listings, against a fake of the service's `{"items", "total"}` pages.

(The client against a live service: tests/server/test_study_client.py.)
"""

from __future__ import annotations

from typing import Any

from liftplace.client import ServiceClient, find_study, study_jobs


class PagedClient(ServiceClient):
    """A ServiceClient whose GETs answer from a list, `limit` items from `offset`; it records each request."""

    def __init__(self, items: list[dict[str, Any]], total: int | None = None):
        super().__init__("http://service.invalid", token="")
        self.items, self.total, self.requests = items, total, []

    def get(self, path: str, **params: Any) -> Any:
        self.requests.append((path, params))
        start, limit = params["offset"], params["limit"]
        total = len(self.items) if self.total is None else self.total
        return {"items": self.items[start:start + limit], "total": total, "limit": limit, "offset": start}


def test_pages_reads_every_page_once_in_order() -> None:
    items = [{"id": i} for i in range(7)]
    client = PagedClient(items)
    assert list(client.pages("/api/jobs", page_size=3, study=5)) == items
    assert client.requests == [("/api/jobs", {"study": 5, "limit": 3, "offset": o}) for o in (0, 3, 6)]
    exact = PagedClient(items[:6])
    assert list(exact.pages("/api/jobs", page_size=3)) == items[:6] and len(exact.requests) == 2  # ends at total


def test_pages_stops_at_an_empty_page_and_when_the_reader_stops() -> None:
    shrunk = PagedClient([{"id": 0}, {"id": 1}], total=10)  # the listing shrank while it was read
    assert list(shrunk.pages("/api/studies", page_size=2)) == [{"id": 0}, {"id": 1}]
    assert [r[1]["offset"] for r in shrunk.requests] == [0, 2]
    studies = PagedClient([{"id": i, "name": f"s{i}"} for i in range(1, 10)])
    assert find_study(studies, "s2") == {"id": 2, "name": "s2"} and len(studies.requests) == 1  # no page after it


def test_find_study_by_name_or_id_and_study_jobs() -> None:
    studies = [{"id": i, "name": f"s{i}"} for i in range(1, 1200)]
    client = PagedClient(studies)
    assert find_study(client, "s1100") == {"id": 1100, "name": "s1100"}
    assert [r[1]["offset"] for r in client.requests] == [0, 500, 1000]  # the service's largest page
    assert find_study(client, "7") is None and find_study(client, "7", match_id=True) == {"id": 7, "name": "s7"}
    jobs = PagedClient([{"id": i} for i in range(501)])
    assert len(study_jobs(jobs, 3)) == 501 and jobs.requests[0] == ("/api/jobs", {"study": 3, "limit": 500,
                                                                                  "offset": 0})
