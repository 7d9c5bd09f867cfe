"""The Ray and Python versions of every node of the cluster, compared with this process's.

Ray refuses, at `ray start` and `ray.init`, a process whose Ray or Python version differs from the
head's, but only against the head: nodes started with a relaxed check
(RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor), or images built apart, can still differ from the API
that sends them jobs. `ray.nodes()` does not say a node's versions, so a tiny task is pinned to each
alive node (NodeAffinitySchedulingStrategy, soft=False, no CPU: it runs on the head and on the API's
node too) and returns the versions of the Python that runs it there::

    check = NodeVersionCheck()
    check.refresh()                       # probes the nodes not seen before (cached by node id)
    check.mismatches()                    # [NodeVersions(node_id=..., ray="2.59.0", ...)] (empty: all equal)

The module needs a connected Ray (`worker.ray_tasks.init_ray`) for `refresh`; the comparison itself
(`NodeVersionCheck.refresh(nodes=..., probe=...)`) takes any node list and probe, for tests.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0  # a node whose probe has not answered by then is reported unverified
RETRY_S = 60.0  # a node whose probe failed is probed again at a refresh at least this much later


@dataclass(frozen=True)
class NodeVersions:
    """What one node runs: its Ray and Python versions (None with `error` when the probe failed)."""

    node_id: str
    address: str
    ray: str | None
    python: str | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def own_versions() -> tuple[str, str]:
    """(Ray version, Python version major.minor.patch) of this process."""
    return ray.__version__, platform.python_version()


@ray.remote(num_cpus=0, max_retries=0)
def _versions_here() -> tuple[str, str]:
    return own_versions()


Probe = Callable[[Sequence[dict[str, Any]], float], list[NodeVersions]]


def probe_nodes(nodes: Sequence[dict[str, Any]], timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeVersions]:
    """Run `_versions_here` on each of `nodes` (entries of `ray.nodes()`) at once; one answer per node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs[node["NodeID"]] = _versions_here.options(scheduling_strategy=strategy).remote()
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    answered = set(ready)
    out = []
    for node in nodes:
        node_id, address, ref = node["NodeID"], str(node.get("NodeManagerAddress", "")), refs[node["NodeID"]]
        if ref not in answered:
            ray.cancel(ref, force=True)
            out.append(NodeVersions(node_id, address, None, None, f"no answer within {timeout_s:g}s"))
            continue
        try:
            ray_version, python_version = ray.get(ref)
            out.append(NodeVersions(node_id, address, str(ray_version), str(python_version)))
        except Exception as exc:  # the node could not run the probe (e.g. it cannot unpickle our task)
            out.append(NodeVersions(node_id, address, None, None, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return out


def describe(node: NodeVersions, ours: tuple[str, str]) -> str:
    """One line for the log and the readiness answer."""
    where = f"node {node.node_id[:12]} at {node.address}"
    if node.error is not None:
        return f"{where}: versions unknown ({node.error})"
    return f"{where} runs Ray {node.ray}, Python {node.python}; this API runs Ray {ours[0]}, Python {ours[1]}"


class NodeVersionCheck:
    """The versions of the cluster's alive nodes, probed once per node id; thread-safe."""

    def __init__(self, ours: tuple[str, str] | None = None, probe: Probe = probe_nodes,
                 timeout_s: float = PROBE_TIMEOUT_S, retry_s: float = RETRY_S) -> None:
        self.ours = ours or own_versions()
        self.probe = probe
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._known: dict[str, NodeVersions] = {}  # alive node id -> its versions (answered, or failed lately)
        self._failed_at: dict[str, float] = {}  # node id -> when its probe failed (monotonic seconds)
        self._nodes: list[NodeVersions] = []
        self._lock = threading.Lock()

    def refresh(self, nodes: Sequence[dict[str, Any]] | None = None) -> list[NodeVersions]:
        """Probe the alive nodes of `nodes` (default `ray.nodes()`) not probed before; all alive nodes' versions.

        A node whose probe failed is probed again at the next refresh; a dead node is forgotten.
        """
        alive = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive", n.get("alive"))]
        alive_ids = {n["NodeID"] for n in alive}
        with self._lock:
            now = time.monotonic()
            due = {k for k, at in self._failed_at.items() if now - at >= self.retry_s}
            new = [n for n in alive if n["NodeID"] not in self._known or n["NodeID"] in due]
            probed = self.probe(new, self.timeout_s) if new else []
            for found in probed:
                self._known[found.node_id] = found
                if found.error is None:
                    self._failed_at.pop(found.node_id, None)
                else:
                    self._failed_at[found.node_id] = now
                if found.error is not None or (found.ray, found.python) != self.ours:
                    log.warning("Ray cluster: %s", describe(found, self.ours))
            self._known = {k: v for k, v in self._known.items() if k in alive_ids}
            self._failed_at = {k: v for k, v in self._failed_at.items() if k in alive_ids}
            self._nodes = [self._known.get(n["NodeID"]) or NodeVersions(
                n["NodeID"], str(n.get("NodeManagerAddress", "")), None, None, "not probed") for n in alive]
            if probed and not self.mismatches() and not self.unverified():
                log.info("Ray cluster: %d nodes, all on Ray %s, Python %s", len(alive), *self.ours)
            return list(self._nodes)

    def mismatches(self) -> list[NodeVersions]:
        """Alive nodes whose Ray or Python version differs from this process's (as of the last refresh)."""
        return [n for n in self._nodes if n.error is None and (n.ray, n.python) != self.ours]

    def unverified(self) -> list[NodeVersions]:
        """Alive nodes whose versions the last refresh could not read."""
        return [n for n in self._nodes if n.error is not None]
