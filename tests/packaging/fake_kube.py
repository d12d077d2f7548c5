"""A stand-in Kubernetes API server, just enough for Helm's install action.

helm-sdkpy exposes no `helm template`, and its Install action needs a cluster: it asks for
the server version and API discovery, looks for an existing release and for resources it
would overwrite, then creates the rendered objects. This server answers those requests on
127.0.0.1 and so lets the real Helm engine render the chart (the release it returns carries
the manifest and the NOTES) on a machine without Kubernetes.

The release's own objects are not kept: each install finds none of them, as on a first
install. What a cluster must hold for Helm's hooks is kept, as a cluster would:

- Hook objects (annotated helm.sh/hook) exist from their creation until Helm deletes them
  (their delete policy), and Helm waits for them by listing and watching them.
- A created Job runs at once through the `run_job` callback, given the Job and a lookup of
  the objects that exist (`get(kind, name)`): so a pre-install Job that needs an object of
  the release, which does not exist yet on a first install, fails as it would in a cluster.
  The callback's answer marks the Job Complete or Failed, which Helm reads.
- `seed` puts objects that exist before the install (a user's Secret).

FAKE_KUBE_LOG=1 prints every request it answers, on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

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
    "batch/v1": [("jobs", "Job", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}
PLURALS = {plural for rs in RESOURCES.values() for plural, _, _ in rs}
# kind -> (group version, plural)
KINDS = {kind: (gv, plural) for gv, rs in RESOURCES.items() for plural, kind, _ in rs}


def _collection(kind: str, namespace: str) -> str:
    """The API path of a namespaced kind's objects in namespace."""
    gv, plural = KINDS[kind]
    prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def _openapi_v3_paths() -> dict:
    """OpenAPI v3 discovery: one document per group version."""
    return {"paths": {("api/v1" if gv == "v1" else f"apis/{gv}"):
                      {"serverRelativeURL": ("/openapi/v3/api/v1" if gv == "v1"
                                             else f"/openapi/v3/apis/{gv}") + "?hash=0"}
                      for gv in RESOURCES}}


def _openapi_v3_doc(gv: str) -> dict:
    """Just what kubectl's field-validation check reads: each kind's PATCH operation takes the
    fieldValidation parameter, so validation is left to the server (this one accepts all)
    instead of being done client-side against the OpenAPI v2 (protobuf) document."""
    group, _, version = gv.rpartition("/")
    paths = {}
    for plural, kind, _ in RESOURCES[gv]:
        path = f"/{'api' if gv == 'v1' else 'apis'}/{gv}/namespaces/{{namespace}}/{plural}/{{name}}"
        paths[path] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [{"name": "fieldValidation", "in": "query",
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        }}
    return {"openapi": "3.0.0", "info": {"title": "fake", "version": "v0"}, "paths": paths}


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

    def log_message(self, fmt, *args) -> None:  # quiet, unless asked
        if os.environ.get("FAKE_KUBE_LOG"):
            print("kube:", fmt % args, file=sys.stderr)

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
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        query = parse_qs(url.query)
        if path == "/openapi/v3":
            return self._send(200, _openapi_v3_paths())
        if path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/"):].removeprefix("api/").removeprefix("apis/")
            if gv in RESOURCES:
                return self._send(200, _openapi_v3_doc(gv))
            return self._not_found()
        if path == "/version":
            return self._send(200, self.server.kube.version)
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return self._send(200, _group_list())
        if path == "/api/v1":
            return self._send(200, _resource_list("v1"))
        if path.startswith("/apis/") and path[len("/apis/"):] in RESOURCES:
            return self._send(200, _resource_list(path[len("/apis/"):]))
        if path.rsplit("/", 1)[-1] in PLURALS:  # a list, or a watch of one
            if query.get("watch", [""])[0] in ("true", "1"):
                return self._watch()
            items = self.server.kube.items(path)
            name = next((s.split("=", 1)[1] for sel in query.get("fieldSelector", [])
                         for s in sel.split(",") if s.startswith("metadata.name=")), None)
            if name is not None:
                items = [o for o in items if o["metadata"]["name"] == name]
            return self._send(200, {"kind": "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": items})
        collection, _, name = path.rpartition("/")
        obj = self.server.kube.get_at(collection, name)
        return self._send(200, obj) if obj is not None else self._not_found()

    def _watch(self) -> None:
        """A watch that reports nothing and ends: what exists was in the list before it, and
        nothing changes on its own here; the watcher starts another."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        obj = self._body()
        obj.setdefault("metadata", {}).update(
            uid="00000000-0000-0000-0000-000000000000", resourceVersion="1",
            creationTimestamp="2025-01-01T00:00:00Z")
        if "helm.sh/hook" in (obj["metadata"].get("annotations") or {}):
            self.server.kube.create(self.path.split("?", 1)[0].rstrip("/"), obj)
        self._send(201, obj)

    def do_PUT(self) -> None:
        self._send(200, self._body())

    do_PATCH = do_PUT

    def do_DELETE(self) -> None:
        collection, _, name = self.path.split("?", 1)[0].rstrip("/").rpartition("/")
        self.server.kube.delete(collection, name)
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


class FakeKube:
    """Serves on an ephemeral port in a thread; use as a context manager.

    run_job(job, get) -> bool runs a created Job (True: it succeeded); get(kind, name) is
    the object of that kind and name in the Job's namespace, or None. Without run_job, a
    Job fails."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        kube: "FakeKube"

    def __init__(self, run_job: Callable[[dict, Callable[[str, str], dict | None]], bool]
                 | None = None, minor: int | None = None):
        """minor: the Kubernetes 1.<minor> this server says it is (default: KUBE_VERSION's);
        Helm's .Capabilities.KubeVersion follows it."""
        self._run_job = run_job
        self.version = dict(KUBE_VERSION) if minor is None else {
            **KUBE_VERSION, "minor": str(minor), "gitVersion": f"v1.{minor}.0"}
        self._objects: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()

    def seed(self, obj: dict, namespace: str = "default") -> None:
        """An object that exists before the install."""
        with self._lock:
            self._objects[(_collection(obj["kind"], namespace), obj["metadata"]["name"])] = obj

    def get(self, kind: str, name: str, namespace: str = "default") -> dict | None:
        return self.get_at(_collection(kind, namespace), name) if kind in KINDS else None

    def get_at(self, collection: str, name: str) -> dict | None:
        with self._lock:
            return self._objects.get((collection, name))

    def items(self, collection: str) -> list[dict]:
        with self._lock:
            return [o for (c, _), o in self._objects.items() if c == collection]

    def create(self, collection: str, obj: dict) -> None:
        if obj.get("kind") == "Job":
            namespace = collection.split("/namespaces/", 1)[1].split("/", 1)[0]
            succeeded = bool(self._run_job and self._run_job(
                obj, lambda kind, name: self.get(kind, name, namespace)))
            condition = "Complete" if succeeded else "Failed"
            obj["status"] = {"succeeded" if succeeded else "failed": 1, "conditions": [
                {"type": condition, "status": "True"}]}
        with self._lock:
            self._objects[(collection, obj["metadata"]["name"])] = obj

    def delete(self, collection: str, name: str) -> None:
        with self._lock:
            self._objects.pop((collection, name), None)

    def __enter__(self) -> "FakeKube":
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.kube = self
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
