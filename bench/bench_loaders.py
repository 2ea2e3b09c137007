"""Time the manifest loaders on 150,000 pods, the Kubernetes limit.

Generates the pods three times: as a multi-document YAML stream (one object
per document), as the ``kind: List`` that ``kubectl get pods -o yaml`` prints,
and as the ``kind: List`` that ``kubectl get pods -o json`` prints.  Each
load runs in a fresh child process so its peak RSS is its own; it prints
the wall and CPU seconds of ``read_inputs`` (CPU time is the steadier figure
on a shared machine), the child's peak RSS, and the time of one deep locate.

Run ``python bench/bench_loaders.py [--pods N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def pod(i: int) -> dict:
    """One pod as kubectl prints it, with the fields kspec reads."""
    app = f"app-{i % 500}"
    node = f"node-{i % 5000}"
    ip = f"10.{128 + i // 65536 % 64}.{i // 256 % 256}.{i % 256}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{i:06d}",
            "namespace": f"ns-{i % 50}",
            "labels": {"app": app, "tier": "backend" if i % 3 else "frontend"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "main",
                "image": "registry.example/app:1.2.3",
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            }],
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod_yaml(i: int) -> str:
    """The same pod as block YAML, written directly (safe_dump is too slow for 150k)."""
    p = pod(i)
    meta, status = p["metadata"], p["status"]
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n"
        f"  labels:\n    app: {meta['labels']['app']}\n    tier: {meta['labels']['tier']}\n"
        f"  name: {meta['name']}\n  namespace: {meta['namespace']}\n"
        f"spec:\n  containers:\n  - image: registry.example/app:1.2.3\n    name: main\n"
        "    ports:\n    - containerPort: 8080\n      name: http\n      protocol: TCP\n"
        f"  nodeName: {p['spec']['nodeName']}\n"
        "status:\n  conditions:\n  - status: \"True\"\n    type: Ready\n"
        f"  podIP: {status['podIP']}\n"
    )


def write_inputs(directory: str, pods: int) -> tuple[str, str, str]:
    yaml_path = os.path.join(directory, "pods.yaml")
    list_path = os.path.join(directory, "pods-list.yaml")
    json_path = os.path.join(directory, "pods.json")
    with open(yaml_path, "w", encoding="utf-8") as out:
        out.write("---\n".join(pod_yaml(i) for i in range(pods)))
    with open(list_path, "w", encoding="utf-8") as out:
        out.write("apiVersion: v1\nitems:\n")
        for i in range(pods):
            out.write("- " + pod_yaml(i).rstrip("\n").replace("\n", "\n  ") + "\n")
        out.write('kind: List\nmetadata:\n  resourceVersion: ""\n')
    with open(json_path, "w", encoding="utf-8") as out:
        json.dump({"apiVersion": "v1", "kind": "List", "items": [pod(i) for i in range(pods)],
                   "metadata": {"resourceVersion": ""}}, out, indent=4)
    return yaml_path, list_path, json_path


def measure(path: str) -> None:
    """Child process: load one file through read_inputs and print the figures."""
    from kspec.frontend.inputs import read_inputs

    start, cpu = time.perf_counter(), time.process_time()
    docs, diagnostics = read_inputs([path], None)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert not diagnostics, diagnostics[:3]
    # one deep locate, to show the lazy path works at this scale
    t0 = time.perf_counter()
    span = docs[-1].locate(("spec", "containers", 0, "ports", 0, "containerPort"))
    located = time.perf_counter() - t0
    print(json.dumps({"docs": len(docs), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                      "peak_rss_mb": round(peak),
                      "last_locate": str(span), "locate_ms": round(located * 1000, 2)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="kspec-bench-") as directory:
        paths = write_inputs(directory, args.pods)
        for path in paths:
            size = os.path.getsize(path) / 1e6
            result = subprocess.run([sys.executable, __file__, "--child", path],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                print(f"{os.path.basename(path)}: failed\n{result.stderr}", file=sys.stderr)
                return 1
            print(f"{os.path.basename(path)} ({size:.0f} MB): {result.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
