"""Encoded answers of list routes, by database revision: a small, bounded, process-local LRU.

A key holds the revision the answer was read at (the sum of `revisions`, bumped by the database's
triggers on every write to the tables a page reads) with everything else that shapes it (filters,
limit, offset, the settings it shows). An answer is served again only while the database is at the
same revision, so a write from any process or host makes the next read build a fresh page.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from fastapi import Response

MAX_ENTRIES = 128
MAX_BYTES = 16 * 2**20  # a page of 500 jobs is about 0.5 MB: the bound on memory, whatever the pages


@dataclass(frozen=True)
class Encoded:
    """A JSON answer as sent (`body`) and its strong ETag (a hash of the body, quoted)."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Encoded:
        return cls(body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"')

    def response(self, if_none_match: str | None) -> Response:
        """200 with the body, or 304 without it when `if_none_match` names this ETag (or is "*").

        "no-cache": a browser keeps the answer but asks again each time, with If-None-Match, so a
        page polled while nothing changes costs a 304 and no body.
        """
        headers = {"ETag": self.etag, "Cache-Control": "private, no-cache"}
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            if self.etag in tags or "*" in tags:
                return Response(status_code=304, headers=headers)
        return Response(self.body, media_type="application/json", headers=headers)


class PageCache:
    """At most `max_entries` answers and `max_bytes` of bodies, least recently used out first (thread-safe).

    Only answers of the newest revision seen are kept: the revision never goes back, so an entry of
    an older one can never be asked for again (a store at an older revision, from a read that raced a
    write, is dropped).
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, Encoded] = OrderedDict()
        self._bytes = 0
        self._revision = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, revision: int, key: Hashable) -> Encoded | None:
        with self._lock:
            if revision != self._revision:
                return None
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, revision: int, key: Hashable, value: Encoded) -> None:
        with self._lock:
            if revision < self._revision or len(value.body) > self.max_bytes:
                return
            if revision > self._revision:
                self._entries.clear()
                self._bytes, self._revision = 0, revision
            old = self._entries.pop(key, None)
            self._bytes += len(value.body) - (len(old.body) if old else 0)
            self._entries[key] = value
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)
