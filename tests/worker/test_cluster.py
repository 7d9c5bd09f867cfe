"""The Ray and Python versions of the cluster's nodes (worker.cluster): a real local Ray, and stand-in nodes."""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from worker.cluster import NodeVersionCheck, NodeVersions, describe, own_versions, probe_nodes  # noqa: E402

OURS = ("2.60.0", "3.11.18")


def test_every_node_of_a_real_ray_runs_our_versions(local_ray: str) -> None:
    assert ":6379 " not in local_ray
    calls: list[int] = []

    def counting(nodes: Sequence[dict[str, Any]], timeout_s: float) -> list[NodeVersions]:
        calls.append(len(nodes))
        return probe_nodes(nodes, timeout_s)

    check = NodeVersionCheck(probe=counting)
    (node,) = check.refresh()
    assert node.node_id == ray.get_runtime_context().get_node_id() and node.address == "127.0.0.1"
    assert (node.ray, node.python, node.error) == (ray.__version__, platform.python_version(), None)
    assert own_versions() == (ray.__version__, platform.python_version())
    assert check.mismatches() == [] and check.unverified() == []
    check.refresh()
    assert calls == [1], "a node is probed once; later refreshes use what it answered"


def test_a_real_node_on_other_versions_is_reported_by_node(local_ray: str, caplog: pytest.LogCaptureFixture) -> None:
    # This process stands in for an API on other versions than the (real) node it probes.
    ours = (ray.__version__, "3.11.0")
    check = NodeVersionCheck(ours=ours)
    with caplog.at_level(logging.WARNING, logger="worker.cluster"):
        check.refresh()
    (node,) = check.mismatches()
    assert node.python == platform.python_version() and node.ray == ray.__version__
    line = describe(node, ours)
    assert node.node_id[:12] in line and f"Python {platform.python_version()}" in line and "Python 3.11.0" in line
    assert line in caplog.text


def _node(node_id: str, address: str, alive: bool = True) -> dict[str, Any]:
    return {"NodeID": node_id, "NodeManagerAddress": address, "Alive": alive}


class StandInProbe:
    """Answers for stand-in nodes: {node id: (ray, python) or an error string}; records what it was asked."""

    def __init__(self, answers: dict[str, tuple[str, str] | str]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def __call__(self, nodes: Sequence[dict[str, Any]], timeout_s: float) -> list[NodeVersions]:
        self.asked.append([n["NodeID"] for n in nodes])
        out = []
        for n in nodes:
            a = self.answers[n["NodeID"]]
            if isinstance(a, str):
                out.append(NodeVersions(n["NodeID"], n["NodeManagerAddress"], None, None, a))
            else:
                out.append(NodeVersions(n["NodeID"], n["NodeManagerAddress"], *a))
        return out


def test_mismatches_are_reported_by_node_with_both_versions(caplog: pytest.LogCaptureFixture) -> None:
    probe = StandInProbe({"head": OURS, "gpu-a": ("2.59.0", "3.11.18"), "gpu-b": ("2.60.0", "3.11.17"),
                          "gpu-c": "no answer within 30s", "gone": ("1.0.0", "3.8.0")})
    nodes = [_node("head", "10.0.0.1"), _node("gpu-a", "10.0.0.2"), _node("gpu-b", "10.0.0.3"),
             _node("gpu-c", "10.0.0.4"), _node("gone", "10.0.0.5", alive=False)]
    check = NodeVersionCheck(ours=OURS, probe=probe)
    with caplog.at_level(logging.WARNING, logger="worker.cluster"):
        check.refresh(nodes)
    assert probe.asked == [["head", "gpu-a", "gpu-b", "gpu-c"]], "dead nodes are not probed"
    assert [(n.node_id, n.ray, n.python) for n in check.mismatches()] == [
        ("gpu-a", "2.59.0", "3.11.18"), ("gpu-b", "2.60.0", "3.11.17")]
    assert [(n.node_id, n.error) for n in check.unverified()] == [("gpu-c", "no answer within 30s")]
    for node in check.mismatches() + check.unverified():
        assert describe(node, OURS) in caplog.text
    assert "node gpu-a at 10.0.0.2 runs Ray 2.59.0, Python 3.11.18; this API runs Ray 2.60.0, Python 3.11.18" \
        in caplog.text


def test_a_failed_probe_is_retried_later_and_a_dead_node_forgotten() -> None:
    probe = StandInProbe({"head": OURS, "gpu": "no answer within 30s"})
    check = NodeVersionCheck(ours=OURS, probe=probe, retry_s=3600)
    nodes = [_node("head", "10.0.0.1"), _node("gpu", "10.0.0.2")]
    check.refresh(nodes)
    check.refresh(nodes)
    assert probe.asked == [["head", "gpu"]], "a failed node waits retry_s before its next probe"
    check.retry_s = 0
    probe.answers["gpu"] = ("2.60.0", "3.11.17")
    check.refresh(nodes)
    assert probe.asked[-1] == ["gpu"] and [n.node_id for n in check.mismatches()] == ["gpu"]
    check.refresh([nodes[0]])  # the worker left the cluster
    assert check.mismatches() == [] and [n.node_id for n in check.refresh([nodes[0]])] == ["head"]
    probe.answers["gpu"] = OURS  # it comes back with a new image (a new node id in Ray; here the same)
    check.refresh(nodes)
    assert probe.asked[-1] == ["gpu"] and check.mismatches() == []
