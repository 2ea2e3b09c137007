"""kube-proxy's vocabulary: chain names, hashes and the small formats it prints.

Everything here reproduces a string kube-proxy writes into its
iptables-restore input (kubernetes/kubernetes at 531be812, the v1.35 line,
``pkg/proxy/iptables/proxier.go``), so an operator can diff our files against
``iptables-save`` on a live node and find the same chain names.  The iptables
and IPVS backends share it.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

# Top-level chains kube-proxy owns.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's anti-martian chain, duplicated by kube-proxy

# Per-service-port chain prefixes.
SVC_PREFIX = "KUBE-SVC-"
SVL_PREFIX = "KUBE-SVL-"
FW_PREFIX = "KUBE-FW-"
EXT_PREFIX = "KUBE-EXT-"
SEP_PREFIX = "KUBE-SEP-"

# nfacct counters kube-proxy ensures at start (pkg/proxy/metrics).
NFACCT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NODEPORT = "localhost_nps_accepted_pkts"

# Above this many endpoints kube-proxy drops the per-endpoint comments.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000


def _hash16(text: str) -> str:
    """sha256, standard base32, first 16 characters: iptables chain names stay <= 28.

    Base32 encodes 5-byte blocks independently, so the first 16 characters are
    exactly the encoding of the first 10 digest bytes (and cost a third as much).
    """
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """``ns/name:port`` (``ns/name`` for an unnamed port), kube-proxy's ServicePortName."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


def port_proto_hash(port_name: str, protocol: str) -> str:
    """The hash shared by a service port's SVC/SVL/EXT/FW chains (protocol lower-case)."""
    return _hash16(port_name + protocol)


def endpoint_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-... for one endpoint (``ip:port``, ``[ip6]:port``) of one service port."""
    return SEP_PREFIX + _hash16(port_name + protocol + endpoint)


@lru_cache(maxsize=4096)
def probability(n: int) -> str:
    """``1/n`` as kube-proxy prints it (Go ``%0.10f``)."""
    return f"{1.0 / n:.10f}"


def masquerade_mark(bit: int) -> str:
    """The mark as kube-proxy formats it: Go ``%#08x`` pads the digits, not the prefix.

    ``%#08x`` of 0x4000 is ``0x00004000`` (iptables-save later prints ``0x4000``).
    """
    return f"0x{1 << bit:08x}"


def quoted(comment: str) -> str:
    """A comment as kube-proxy writes it when it has spaces: in double quotes."""
    return f'"{comment}"'


def endpoint_string(ip: str, port: int, family: int) -> str:
    """``net.JoinHostPort``: IPv6 addresses in brackets."""
    return f"[{ip}]:{port}" if family == 6 else f"{ip}:{port}"
