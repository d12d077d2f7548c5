"""A stand-in Kubernetes API server, just enough for Helm's install action.

helm-sdkpy exposes no `helm template`, and its Install action needs a cluster: it asks for
the server version and API discovery, looks for an existing release and for resources it
would overwrite, then creates the rendered objects. This server answers those requests on
127.0.0.1, creates nothing, and so lets the real Helm engine render the chart (the release it
returns carries the manifest and the NOTES) on a machine without Kubernetes.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KUBE_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}

# (plural, kind, namespaced) per group version: what the chart and Helm's release storage use.
RESOURCES = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [("deployments", "Deployment", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}
PLURALS = {plural for rs in RESOURCES.values() for plural, _, _ in rs}


def _resource_list(group_version: str) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for plural, kind, namespaced in RESOURCES[group_version]
        ],
    }


def _group_list() -> dict:
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


class _Handler(BaseHTTPRequestHandler):
    server: "FakeKube._Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(
            404,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
             "code": 404, "message": "not found"},
        )

    def _body(self) -> dict:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # Helm's release records come as protobuf; only the answer's shape matters to it.
        if "json" not in (self.headers.get("Content-Type") or ""):
            return {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "release"}}
        return json.loads(raw or b"{}")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/version":
            return self._send(200, KUBE_VERSION)
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return self._send(200, _group_list())
        if path == "/api/v1":
            return self._send(200, _resource_list("v1"))
        if path.startswith("/apis/") and path[len("/apis/"):] in RESOURCES:
            return self._send(200, _resource_list(path[len("/apis/"):]))
        if path.rsplit("/", 1)[-1] in PLURALS:  # a list: nothing exists
            return self._send(200, {"kind": "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": []})
        return self._not_found()  # a single object: nothing exists

    def do_POST(self) -> None:
        obj = self._body()
        obj.setdefault("metadata", {}).update(
            uid="00000000-0000-0000-0000-000000000000", resourceVersion="1",
            creationTimestamp="2025-01-01T00:00:00Z")
        self._send(201, obj)

    def do_PUT(self) -> None:
        self._send(200, self._body())

    do_PATCH = do_PUT

    def do_DELETE(self) -> None:
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


class FakeKube:
    """Serves on an ephemeral port in a thread; use as a context manager."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True

    def __enter__(self) -> "FakeKube":
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: fake\n  cluster:\n"
            f"    server: http://127.0.0.1:{self.port}\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
            "    namespace: default\n"
            "users:\n- name: fake\n  user: {}\n"
            "current-context: fake\n"
        )
