"""The invariant catalogue: stable IDs, titles, explanations, typical fixes.

Checkers register themselves with :func:`checker`; ``kspec verify --list``
prints :data:`CATALOGUE`.  IDs never change meaning once released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Invariant:
    id: str
    title: str
    explanation: str
    fix: str
    scope: str  # "spec" (facts about the model) | "packets" (proved over symbolic packets)


CATALOGUE: dict[str, Invariant] = {i.id: i for i in (
    Invariant("KS101", "node IPs are unique",
              "Two nodes with one address make the node network ambiguous: routes and nodePorts reach either.",
              "give every node its own InternalIP", "spec"),
    Invariant("KS102", "node podCIDRs are pairwise disjoint",
              "Each node owns a disjoint part of the pod network; an overlap routes one pod range to two nodes.",
              "give the nodes non-overlapping podCIDRs (or let kspec allocate them)", "spec"),
    Invariant("KS103", "every node podCIDR lies inside the cluster pod CIDR",
              "Pod ranges outside the cluster CIDR are treated as outside traffic: kube-proxy masquerades them.",
              "move the podCIDR into the cluster pod CIDR or widen --cluster-cidr", "spec"),
    Invariant("KS104", "pod IPs are unique",
              "Every pod gets its own IP; two pods with one IP break pod-to-pod routing and endpoints.",
              "give one of the pods another address (or let kspec allocate it)", "spec"),
    Invariant("KS105", "every pod IP lies inside its node's podCIDR",
              "Nodes route a pod range to the node that owns it; a pod outside its node's range is unreachable.",
              "pick an address from the node's podCIDR, or move the pod to the node that owns its address", "spec"),
    Invariant("KS106", "node, pod and service networks are pairwise disjoint",
              "Service IPs are rewritten, pod IPs are routed to nodes, node IPs are the node network: "
              "an address in two of them is captured by the wrong one.",
              "choose non-overlapping node, pod and service ranges", "spec"),
    Invariant("KS107", "every cluster IP lies inside the service CIDR, and is unique",
              "The API server only hands out cluster IPs from the service CIDR, one per service.",
              "pick a free address inside the service CIDR (or drop clusterIP to have one allocated)", "spec"),
    Invariant("KS108", "every nodePort lies in the nodePort range, and is unique per protocol",
              "A nodePort is opened on every node; two services on one port and protocol collide everywhere.",
              "pick a free port inside the nodePort range (or drop nodePort to have one allocated)", "spec"),
    Invariant("KS109", "every service IP resolves to a live endpoint",
              "Each port of each selector service needs at least one ready endpoint, or its clients are refused.",
              "make the selector match ready pods in the service's namespace", "spec"),
    Invariant("KS110", "every named targetPort resolves on the pods the service selects",
              "A named targetPort is looked up per pod; pods without that port name are no endpoints of the port.",
              "name the container port like the targetPort, or use a number", "spec"),
    Invariant("KS111", "every service name resolves in DNS to its cluster IP; no two records clash",
              "<svc>.<ns>.svc.<domain> must answer the service's cluster IP(s) and nothing else.",
              "rename the clashing service or fix its cluster IP", "spec"),
    Invariant("KS201", "pod-to-pod reachability without NAT",
              "For every pair of pods a packet arrives with its source and destination unchanged.",
              "remove the rule that rewrites pod-to-pod traffic, or add the missing route", "packets"),
    Invariant("KS202", "service reachability",
              "From every pod and node, every (cluster IP, port, protocol) is rewritten only to live endpoints "
              "of that port, and every live endpoint can be chosen.",
              "recompile the node's rules; a missing or extra KUBE-SEP rule is named in the witness", "packets"),
    Invariant("KS203", "nodePort / load-balancer reachability honours externalTrafficPolicy",
              "From outside, node:nodePort and load-balancer IPs reach endpoints (local ones only for Local).",
              "recompile the node's rules", "packets"),
    Invariant("KS204", "traffic to a service with no endpoints is rejected, not black-holed",
              "kube-proxy REJECTs packets for a service without endpoints so clients fail fast.",
              "add the REJECT rule (recompile) or give the service endpoints", "packets"),
    Invariant("KS205", "rules match the spec",
              "A node's rule set implements exactly the spec's service map: nothing missing, nothing extra.",
              "recompile and reload the node's rules", "packets"),
)}

Checker = Callable[..., object]
CHECKERS: dict[str, Checker] = {}


def checker(invariant_id: str) -> Callable[[Checker], Checker]:
    """Register the function that decides one invariant."""
    if invariant_id not in CATALOGUE:
        raise ValueError(f"unknown invariant {invariant_id}")

    def register(fn: Checker) -> Checker:
        if invariant_id in CHECKERS:
            raise ValueError(f"{invariant_id} registered twice")
        CHECKERS[invariant_id] = fn
        return fn

    return register
