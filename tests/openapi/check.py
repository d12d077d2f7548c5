#!/usr/bin/env python3
"""Checks a running tokengate admin API against its OpenAPI description.

Usage:
    python3 tests/openapi/check.py --base http://127.0.0.1:PORT --key KEY \
        --spec docs/admin-openapi.json

Every operation of the spec is called (a scenario that creates users, tokens and sessions
and removes them again), plus the error cases the spec documents that a client can
provoke. For every response it checks that the status is documented for that operation and
that a documented JSON body validates against its schema (Draft 2020-12, `$ref`s into the
spec resolved through a `referencing.Registry`); a response documented without content must
be empty. The request bodies and parameters the script sends are validated too, except for
the requests that are malformed on purpose. At the end it checks that every operation of
the spec answered with a success at least once, and that no response carried a secret: a
token's hash or secret (outside its creation response), a session cookie value (outside
its creation response) or its hash, a password, an argon2 hash.

One line per check; exit status 0 when everything held, 1 with the list of failures
otherwise, 2 on a usage error. Standard library plus `jsonschema` (>= 4.18).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import re
import secrets
import sys
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

try:
    import jsonschema
    import referencing
    import referencing.jsonschema
    from jsonschema import Draft202012Validator, FormatChecker
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        f"check.py needs the jsonschema package (>= 4.18): {e}. "
        "Run scripts/test.sh (it installs it) or `pip install jsonschema`.",
        file=sys.stderr,
    )
    sys.exit(2)

SPEC_URI = "urn:tokengate:admin-openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
NO_BODY = object()  # "send no body", distinct from a JSON `null` body
DEFAULT_KEY = object()  # "send the right admin key"
TIMEOUT_SECONDS = 30
MAX_PAGES = 10_000

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


class Abort(Exception):
    """A check failed in a way the scenario cannot go on from."""


def pointer_escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def pointer_of(*segments: str) -> str:
    return "".join("/" + pointer_escape(s) for s in segments)


def utc_rfc3339(value: str) -> bool:
    """RFC 3339 date-time in UTC (the spec's `Timestamp`)."""
    if not isinstance(value, str):
        return True  # `format` only constrains strings
    if not RFC3339.match(value):
        return False
    try:
        parsed = dt.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.utcoffset() == dt.timedelta(0)


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Answer:
    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    json: Any = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Checker:
    base: str
    key: str
    spec: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    checks: int = 0
    called: set[tuple[str, str]] = field(default_factory=set)
    succeeded: set[tuple[str, str]] = field(default_factory=set)
    # (label, body) of every response, for the leak check at the end.
    bodies: list[tuple[str, str]] = field(default_factory=list)
    # Secrets that may appear in exactly one response: {secret: label of that response}.
    shown_once: dict[str, str] = field(default_factory=dict)
    # Secrets that may never appear in a response.
    never: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.base)
        if parsed.scheme != "http" or not parsed.hostname:
            raise SystemExit(f"--base must be http://host:port, not {self.base!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        resource = referencing.Resource.from_contents(
            self.spec, default_specification=referencing.jsonschema.DRAFT202012
        )
        self.registry = referencing.Registry().with_resource(SPEC_URI, resource)
        self.format_checker = FormatChecker()
        self.format_checker.checks("date-time")(utc_rfc3339)
        self.validators: dict[str, Draft202012Validator] = {}
        self.operations = {
            (method.upper(), path): op
            for path, item in self.spec.get("paths", {}).items()
            for method, op in item.items()
            if method in HTTP_METHODS
        }

    # ------------------------------------------------------------------ reporting

    def ok(self, message: str) -> None:
        self.checks += 1
        print(f"ok    {message}", flush=True)

    def fail(self, message: str) -> None:
        self.checks += 1
        self.failures.append(message)
        print(f"FAIL  {message}", flush=True)

    def expect(self, condition: bool, message: str, detail: str = "") -> bool:
        if condition:
            self.ok(message)
        else:
            self.fail(f"{message}{': ' + detail if detail else ''}")
        return condition

    # ------------------------------------------------------------------ the spec

    def resolve(self, obj: Any, pointer: str) -> tuple[Any, str]:
        """Follows local `$ref`s of non-schema objects (responses, parameters), keeping
        track of where in the spec the result lives."""
        seen = 0
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            if not ref.startswith("#/"):
                raise Abort(f"spec: only local $refs are supported, not {ref!r}")
            pointer = ref[1:]
            obj = self.spec
            for raw in pointer.split("/")[1:]:
                part = raw.replace("~1", "/").replace("~0", "~")
                if not isinstance(obj, dict) or part not in obj:
                    raise Abort(f"spec: dangling $ref {ref!r}")
                obj = obj[part]
            seen += 1
            if seen > 50:
                raise Abort(f"spec: $ref loop at {ref!r}")
        return obj, pointer

    def validator(self, pointer: str) -> Draft202012Validator:
        """A validator for the schema at `pointer` in the spec; its `$ref`s resolve
        against the whole document through the registry."""
        if pointer not in self.validators:
            ref = SPEC_URI + "#" + urllib.parse.quote(pointer, safe="/~")
            self.validators[pointer] = Draft202012Validator(
                {"$ref": ref},
                registry=self.registry,
                format_checker=self.format_checker,
            )
        return self.validators[pointer]

    def schema_errors(self, pointer: str, instance: Any) -> list[str]:
        errors = sorted(
            self.validator(pointer).iter_errors(instance),
            key=lambda e: (list(e.absolute_path), e.message),
        )
        out = []
        for error in errors[:5]:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            out.append(f"at {where}: {error.message}")
        return out

    def parameters(self, method: str, template: str) -> dict[tuple[str, str], tuple[Any, str]]:
        """(in, name) -> (parameter object, its pointer): path-level, then operation-level."""
        out: dict[tuple[str, str], tuple[Any, str]] = {}
        item = self.spec["paths"][template]
        for level, base in (
            (item, pointer_of("paths", template)),
            (item[method.lower()], pointer_of("paths", template, method.lower())),
        ):
            for i, raw in enumerate(level.get("parameters", [])):
                param, where = self.resolve(raw, f"{base}/parameters/{i}")
                out[(param["in"], param["name"])] = (param, where)
        return out

    # ------------------------------------------------------------------ one call

    def call(
        self,
        method: str,
        template: str,
        params: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        body: Any = NO_BODY,
        raw_body: bytes | None = None,
        key: Any = DEFAULT_KEY,
        authorization: str | None = None,
        expect: int | tuple[int, ...] | None = None,
        valid: bool = True,
        label: str = "",
    ) -> Answer:
        """Sends one request for the operation `method template` and checks the answer
        against the spec. `valid=False` marks a request malformed on purpose: its body and
        parameters are not validated. `expect` is the status (or statuses) the scenario
        needs; the answer's status must be documented whatever `expect` says."""
        method = method.upper()
        op_key = (method, template)
        op = self.operations.get(op_key)
        if op is None:
            raise Abort(f"the script calls {method} {template}, which the spec does not describe")
        self.called.add(op_key)
        params = params or {}
        query = {k: v for k, v in (query or {}).items() if v is not None}
        name = f"{method} {template}" + (f" [{label}]" if label else "")

        if valid:
            self.check_request(method, template, op, params, query, body, name)

        path = template
        for pname, value in params.items():
            path = path.replace("{" + pname + "}", urllib.parse.quote(str(value), safe=""))
        if "{" in path:
            raise Abort(f"{name}: path parameters missing in {path}")
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")

        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif key is DEFAULT_KEY:
            headers["Authorization"] = f"Bearer {self.key}"
        elif key is not None:
            headers["Authorization"] = f"Bearer {key}"
        payload: bytes | None = None
        if raw_body is not None:
            payload = raw_body
        elif body is not NO_BODY:
            payload = json.dumps(body).encode()
        if payload is not None:
            headers["Content-Type"] = "application/json"

        answer = self.send(method, target, headers, payload)
        self.bodies.append((name, answer.text))
        self.check_response(name, op_key, op, answer, expect)
        if 200 <= answer.status < 300:
            self.succeeded.add(op_key)
        return answer

    def send(self, method: str, target: str, headers: dict[str, str], payload: bytes | None) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_SECONDS)
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            body = response.read()
            return Answer(
                method=method,
                url=target,
                status=response.status,
                headers={k.lower(): v for k, v in response.getheaders()},
                body=body,
            )
        except OSError as e:
            raise Abort(f"{method} {target}: request failed: {e!r}") from e
        finally:
            connection.close()

    def check_request(
        self,
        method: str,
        template: str,
        op: dict[str, Any],
        params: dict[str, Any],
        query: dict[str, Any],
        body: Any,
        name: str,
    ) -> None:
        """The script's own requests must follow the spec (catches drift in the script)."""
        documented = self.parameters(method, template)
        for (where, pname), (param, _) in documented.items():
            if param.get("required") and where == "path" and pname not in params:
                raise Abort(f"{name}: the script leaves out required path parameter {pname}")
            if param.get("required") and where == "query" and pname not in query:
                raise Abort(f"{name}: the script leaves out required query parameter {pname}")
        for where, values in (("path", params), ("query", query)):
            for pname, value in values.items():
                if (where, pname) not in documented:
                    raise Abort(f"{name}: the script sends undocumented {where} parameter {pname!r}")
                _, ppointer = documented[(where, pname)]
                errors = self.schema_errors(ppointer + "/schema", value)
                if errors:
                    raise Abort(f"{name}: the script's {where} parameter {pname}={value!r} "
                                f"does not match the spec: {'; '.join(errors)}")
        request_body = op.get("requestBody")
        if request_body is None:
            if body is not NO_BODY:
                raise Abort(f"{name}: the script sends a body the spec does not describe")
            return
        rb, rb_pointer = self.resolve(
            request_body, pointer_of("paths", template, method.lower(), "requestBody")
        )
        if body is NO_BODY:
            if rb.get("required"):
                raise Abort(f"{name}: the script sends no body, the spec requires one")
            return
        content = rb.get("content", {})
        if "application/json" not in content or "schema" not in content["application/json"]:
            raise Abort(f"{name}: the spec documents no JSON request schema")
        errors = self.schema_errors(rb_pointer + pointer_of("content", "application/json", "schema"), body)
        if errors:
            raise Abort(f"{name}: the script's request body {json.dumps(body)} does not match "
                        f"the spec: {'; '.join(errors)}")

    def check_response(
        self,
        name: str,
        op_key: tuple[str, str],
        op: dict[str, Any],
        answer: Answer,
        expect: int | tuple[int, ...] | None,
    ) -> None:
        method, template = op_key
        got = f"{answer.status} {answer.text[:300]!r}"
        responses = op.get("responses", {})
        code = str(answer.status)
        for candidate in (code, code[0] + "XX", code[0] + "xx", "default"):
            if candidate in responses:
                break
        else:
            self.fail(f"{name}: status {answer.status} is not documented "
                      f"(documented: {', '.join(responses)}); body {answer.text[:300]!r}")
            candidate = None
        if candidate is not None:
            response, rpointer = self.resolve(
                responses[candidate], pointer_of("paths", template, method.lower(), "responses", candidate)
            )
            content = response.get("content")
            if not content:
                self.expect(answer.body == b"", f"{name}: {answer.status} has no body",
                            f"got {answer.text[:300]!r}")
            elif "application/json" in content and "schema" in content["application/json"]:
                ctype = answer.headers.get("content-type", "")
                self.expect(ctype.split(";")[0].strip().lower() == "application/json",
                            f"{name}: {answer.status} is application/json", f"Content-Type {ctype!r}")
                try:
                    answer.json = json.loads(answer.body)
                except ValueError as e:
                    self.fail(f"{name}: {answer.status} body is not JSON ({e}): {answer.text[:300]!r}")
                else:
                    errors = self.schema_errors(
                        rpointer + pointer_of("content", "application/json", "schema"), answer.json
                    )
                    self.expect(not errors, f"{name}: {answer.status} body matches the schema",
                                "; ".join(errors) + f"; body {answer.text[:300]!r}")
        if answer.status == 204:
            self.expect(answer.body == b"", f"{name}: 204 is empty", f"got {answer.text[:300]!r}")
        if expect is not None:
            wanted = (expect,) if isinstance(expect, int) else expect
            self.expect(answer.status in wanted,
                        f"{name}: status {'/'.join(map(str, wanted))}", f"got {got}")

    # ------------------------------------------------------------------ helpers

    def body_of(self, answer: Answer, what: str) -> Any:
        """The JSON the scenario goes on with; aborts if the answer has none."""
        if answer.json is None:
            raise Abort(f"cannot go on: {what} answered {answer.status} {answer.text[:300]!r}")
        return answer.json

    def walk(self, template: str, query: dict[str, Any], limit: int, label: str) -> list[Any]:
        """Every item of a paginated listing, following `next` with `?after=`."""
        items: list[Any] = []
        after = None
        pages = 0
        while True:
            pages += 1
            if pages > MAX_PAGES:
                raise Abort(f"{label}: more than {MAX_PAGES} pages, `next` never becomes null")
            answer = self.call("GET", template, query={**query, "limit": limit, "after": after},
                               expect=200, label=f"{label}, page {pages}")
            page = self.body_of(answer, label)
            self.expect(len(page["data"]) <= limit,
                        f"{label}, page {pages}: at most limit={limit} items", f"got {len(page['data'])}")
            items.extend(page["data"])
            if page["next"] is None:
                break
            self.expect(len(page["data"]) > 0, f"{label}, page {pages}: a page with a `next` is not empty")
            if page["next"] == after:
                raise Abort(f"{label}: `next` repeats {after!r}")
            after = page["next"]
        self.ok(f"{label}: {len(items)} items in {pages} pages")
        return items

    # ------------------------------------------------------------------ the scenario

    def run(self) -> None:
        run_id = secrets.token_hex(4)
        prefix = f"oa{run_id}"
        alice, bob = f"{prefix}-alice", f"{prefix}-bob"
        extra = [f"{prefix}-user{i}" for i in range(1, 4)]
        pw_bob, pw_alice = f"pw-bob-{secrets.token_hex(8)}", f"pw-alice-{secrets.token_hex(8)}"
        pw_unused = f"pw-unused-{secrets.token_hex(8)}"
        for pw in (pw_bob, pw_alice, pw_unused):
            self.never[pw] = "a password sent"

        # --- health, no key needed
        self.call("GET", "/healthz", key=None, expect=200)
        self.call("GET", "/readyz", key=None, expect=200)

        # --- this document
        answer = self.call("GET", "/admin/openapi.json", expect=200)
        if answer.json is not None:
            self.expect(answer.json == self.spec,
                        "GET /admin/openapi.json serves the same document as the spec file",
                        "the served document differs from --spec")

        # --- reload: the server re-reads its (unchanged) config file
        answer = self.call("POST", "/admin/reload", expect=200)
        if answer.json is not None:
            self.expect(answer.json.get("restart_required") == [],
                        "a reload of the same file needs no restart", str(answer.json))

        # --- every secured operation refuses a missing or wrong key
        self.auth_checks(prefix, pw_unused)

        # --- users
        self.call("POST", "/admin/users", body={"name": alice}, expect=201, label="no password")
        created = self.body_of(self.call("POST", "/admin/users", body={"name": bob, "password": pw_bob},
                                         expect=201, label="with password"), "create bob")
        self.expect(created.get("name") == bob and created.get("has_password") is True,
                    "createUser with a password: has_password true", json.dumps(created))
        for name in extra:
            self.call("POST", "/admin/users", body={"name": name, "password": None}, expect=201,
                      label="password null")
        self.call("POST", "/admin/users", body={"name": alice}, expect=409, label="duplicate")
        self.call("POST", "/admin/users", body={"name": f"{prefix} has space"}, expect=422,
                  valid=False, label="name with a space")
        self.call("POST", "/admin/users", body={"name": ""}, expect=422, valid=False, label="empty name")
        self.call("POST", "/admin/users", body={"name": "x" * 256}, expect=422, valid=False,
                  label="256-character name")
        self.call("POST", "/admin/users", body={"name": f"{prefix}-carol", "password": ""},
                  expect=422, valid=False, label="empty password")
        self.call("GET", "/admin/users/{name}", params={"name": f"{prefix}-carol"}, expect=404,
                  label="not created by the refused request")
        self.call("POST", "/admin/users", raw_body=b'{"name": ', expect=400, valid=False,
                  label="malformed JSON")
        self.call("POST", "/admin/users", raw_body=b"", expect=400, valid=False, label="empty body")

        got = self.body_of(self.call("GET", "/admin/users/{name}", params={"name": alice}, expect=200),
                           "get alice")
        self.expect(got.get("name") == alice and got.get("has_password") is False,
                    "getUser: the user as created, without a password", json.dumps(got))
        self.call("GET", "/admin/users/{name}", params={"name": f"{prefix}-nobody"}, expect=404,
                  label="unknown user")

        ours = sorted([alice, bob, *extra])
        for limit in (1, 2):
            listed = self.walk("/admin/users", {}, limit, f"listUsers limit={limit}")
            names = [u["name"] for u in listed]
            self.expect(names == sorted(set(names)), f"listUsers limit={limit}: by name, no repeats",
                        f"got {names}")
            self.expect([n for n in names if n.startswith(prefix)] == ours,
                        f"listUsers limit={limit}: every created user once", f"got {names}")
        page = self.body_of(self.call("GET", "/admin/users", query={"limit": 1000}, expect=200,
                                      label="limit=1000"), "list users")
        self.expect([u["name"] for u in page["data"] if u["name"].startswith(prefix)] == ours,
                    "listUsers limit=1000: every created user", json.dumps(page)[:300])
        page = self.body_of(self.call("GET", "/admin/users", query={"after": ours[1]}, expect=200,
                                      label="after a name"), "list users after")
        self.expect([u["name"] for u in page["data"] if u["name"].startswith(prefix)] == ours[2:],
                    "listUsers after=<name>: only the names after it", json.dumps(page)[:300])
        for bad, what in (("0", "limit=0"), ("1001", "limit=1001"), ("abc", "limit=abc")):
            self.call("GET", "/admin/users", query={"limit": bad}, expect=400, valid=False, label=what)

        # --- passwords
        self.call("PUT", "/admin/users/{name}/password", params={"name": alice},
                  body={"password": pw_alice}, expect=204)
        got = self.body_of(self.call("GET", "/admin/users/{name}", params={"name": alice}, expect=200,
                                     label="after setting a password"), "get alice")
        self.expect(got.get("has_password") is True, "setPassword: has_password becomes true", json.dumps(got))
        self.call("PUT", "/admin/users/{name}/password", params={"name": alice}, body={"password": ""},
                  expect=422, valid=False, label="empty password")
        self.call("PUT", "/admin/users/{name}/password", params={"name": alice},
                  raw_body=b'{"password": tru', expect=400, valid=False, label="malformed JSON")
        self.call("PUT", "/admin/users/{name}/password", params={"name": f"{prefix}-nobody"},
                  body={"password": pw_unused}, expect=404, label="unknown user")
        self.call("PUT", "/admin/users/{name}/password", params={"name": alice}, body={"password": None},
                  expect=204, label="null removes it")
        got = self.body_of(self.call("GET", "/admin/users/{name}", params={"name": alice}, expect=200,
                                     label="after removing the password"), "get alice")
        self.expect(got.get("has_password") is False, "setPassword null: has_password becomes false",
                    json.dumps(got))

        # --- tokens
        tokens = self.token_checks(prefix, alice, bob)

        # --- sessions
        self.session_checks(prefix, alice)

        # --- removing users
        answer = self.call("DELETE", "/admin/users/{name}", params={"name": alice}, expect=200)
        removed = self.body_of(answer, "delete alice")
        self.expect(removed == {"removed_tokens": 2, "removed_sessions": 1},
                    "deleteUser: counts the user's remaining tokens (2) and sessions (1)", json.dumps(removed))
        self.call("GET", "/admin/users/{name}", params={"name": alice}, expect=404, label="deleted")
        self.call("DELETE", "/admin/users/{name}", params={"name": alice}, expect=404, label="again")
        self.call("GET", "/admin/users/{name}/sessions", params={"name": alice}, expect=404,
                  label="deleted user")
        for token in tokens["alice"]:
            self.call("GET", "/admin/tokens/{id}", params={"id": token["id"]}, expect=404,
                      label="token of a deleted user")
        left = self.walk("/admin/tokens", {"user": alice}, 10, "listTokens of a deleted user")
        self.expect(left == [], "deleteUser: the user's tokens are gone", json.dumps(left))
        removed = self.body_of(self.call("DELETE", "/admin/users/{name}", params={"name": bob}, expect=200,
                                         label="bob"), "delete bob")
        self.expect(removed == {"removed_tokens": 1, "removed_sessions": 0},
                    "deleteUser bob: one token, no sessions", json.dumps(removed))
        for name in extra:
            self.call("DELETE", "/admin/users/{name}", params={"name": name}, expect=200, label="cleanup")
        listed = self.walk("/admin/users", {}, 1000, "listUsers after the cleanup")
        self.expect([u["name"] for u in listed if u["name"].startswith(prefix)] == [],
                    "every created user is gone")

    def auth_checks(self, prefix: str, pw_unused: str) -> None:
        bodies = {
            "createUser": {"name": f"{prefix}-authcheck"},
            "setPassword": {"password": pw_unused},
            "createToken": {"user": f"{prefix}-authcheck", "name": "auth check"},
            "updateToken": {"abilities": ["read"]},
            "createSession": {"user": f"{prefix}-authcheck"},
        }
        security_default = self.spec.get("security", [])
        secured = 0
        for (method, template), op in sorted(self.operations.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if not op.get("security", security_default):
                continue
            secured += 1
            params = {}
            for (where, pname), (param, _) in self.parameters(method, template).items():
                if where != "path":
                    continue
                schema = param.get("schema", {})
                if pname == "name":
                    params[pname] = f"{prefix}-nobody"
                elif schema.get("type") == "integer":
                    params[pname] = 987654321
                else:
                    params[pname] = "0" * 64
            body = NO_BODY
            if "requestBody" in op:
                body = bodies.get(op.get("operationId", ""), {})
            valid = body is NO_BODY or op.get("operationId") in bodies
            self.call(method, template, params=params, body=body, key=None, expect=401,
                      valid=valid, label="no key")
            self.call(method, template, params=params, body=body, key=f"wrong-{secrets.token_hex(8)}",
                      expect=401, valid=valid, label="wrong key")
        self.expect(secured > 0, "the spec has secured operations")
        self.call("GET", "/admin/users", authorization=f"Basic {self.key}", expect=401,
                  label="the key, but not as a bearer token")
        self.call("GET", "/admin/users", key=self.key + "x", expect=401, label="the key plus one character")
        self.call("GET", "/admin/users", key=self.key[:-1], expect=401, label="the key minus one character")
        self.call("GET", "/admin/users/{name}", params={"name": f"{prefix}-authcheck"}, expect=404,
                  label="createUser without a key created nothing")
        listed = self.walk("/admin/tokens", {"user": f"{prefix}-authcheck"}, 10,
                           "createToken without a key created nothing")
        self.expect(listed == [], "no token was created without a key", json.dumps(listed))

    def remember_token(self, created: dict[str, Any], label: str) -> None:
        plaintext = created["plaintext"]
        secret = plaintext.split("|", 1)[1] if "|" in plaintext else plaintext
        self.shown_once[plaintext] = label
        self.shown_once[secret] = label
        self.never[hashlib.sha256(secret.encode()).hexdigest()] = f"the hash of the token of {label}"

    def token_checks(self, prefix: str, alice: str, bob: str) -> dict[str, list[dict[str, Any]]]:
        undeclared = f"{prefix}-no-such-ability"
        label = "abilities with an undeclared one"
        answer = self.call("POST", "/admin/tokens",
                           body={"user": alice, "name": "ci 1", "abilities": ["read", "create", undeclared]},
                           expect=201, label=label)
        t1 = self.body_of(answer, "create token 1")
        self.remember_token(t1, f"POST /admin/tokens [{label}]")
        self.expect(t1["dropped_abilities"] == [undeclared], "createToken: the undeclared ability is dropped",
                    json.dumps(t1["dropped_abilities"]))
        self.expect(undeclared not in t1["token"]["abilities"] and "read" in t1["token"]["abilities"],
                    "createToken: the token has the declared abilities only", json.dumps(t1["token"]))
        self.expect(t1["plaintext"].startswith(f"{t1['token']['id']}|"),
                    "createToken: the plaintext is `{id}|…`", "plaintext does not start with the id")
        self.expect(t1["token"]["user"] == alice and t1["token"]["name"] == "ci 1",
                    "createToken: user and name as sent", json.dumps(t1["token"]))

        label = "default abilities"
        t2 = self.body_of(self.call("POST", "/admin/tokens", body={"user": alice, "name": "ci 2"},
                                    expect=201, label=label), "create token 2")
        self.remember_token(t2, f"POST /admin/tokens [{label}]")
        self.expect(t2["dropped_abilities"] == [], "createToken without abilities: nothing dropped",
                    json.dumps(t2))

        label = "expires_at"
        expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).replace(microsecond=0)
        expires_text = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        t3 = self.body_of(self.call("POST", "/admin/tokens",
                                    body={"user": alice, "name": "ci 3", "abilities": ["read"],
                                          "expires_at": expires_text},
                                    expect=201, label=label), "create token 3")
        self.remember_token(t3, f"POST /admin/tokens [{label}]")
        got_expiry = t3["token"]["expires_at"]
        self.expect(got_expiry is not None and parse_time(got_expiry) == expires,
                    "createToken: expires_at as sent", f"sent {expires_text}, got {got_expiry}")

        label = "another user"
        tb = self.body_of(self.call("POST", "/admin/tokens", body={"user": bob, "name": "ci bob"},
                                    expect=201, label=label), "create bob's token")
        self.remember_token(tb, f"POST /admin/tokens [{label}]")

        ids = [t["token"]["id"] for t in (t1, t2, t3, tb)]
        self.expect(len(set(ids)) == 4, "createToken: every token gets its own id", str(ids))

        past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.call("POST", "/admin/tokens", body={"user": alice, "name": "ci x", "expires_at": past},
                  expect=422, label="expiry in the past")
        self.call("POST", "/admin/tokens", body={"user": "has a space", "name": "ci x"}, expect=422,
                  label="user id with a space")
        self.call("POST", "/admin/tokens", body={"user": alice, "name": ""}, expect=422, valid=False,
                  label="empty name")
        self.call("POST", "/admin/tokens", raw_body=b'{"user": "a", "name": "b"', expect=400, valid=False,
                  label="malformed JSON")

        for t in (t1, t2, t3, tb):
            got = self.body_of(self.call("GET", "/admin/tokens/{id}", params={"id": t["token"]["id"]},
                                         expect=200), "get token")
            self.expect(got == t["token"], f"getToken {t['token']['id']}: the token as created",
                        f"created {json.dumps(t['token'])}, got {json.dumps(got)}")
        unknown = max(ids) + 1_000_000
        self.call("GET", "/admin/tokens/{id}", params={"id": unknown}, expect=404, label="unknown id")
        self.call("GET", "/admin/tokens/{id}", params={"id": "abc"}, expect=400, valid=False,
                  label="non-numeric id")

        # PATCH
        label = "replace abilities"
        answer = self.call("PATCH", "/admin/tokens/{id}", params={"id": t2["token"]["id"]},
                           body={"abilities": ["create", undeclared]}, expect=200, label=label)
        updated = self.body_of(answer, "update token 2")
        self.expect(updated["token"]["abilities"] == ["create"] and updated["dropped_abilities"] == [undeclared],
                    "updateToken: abilities replaced, the undeclared one dropped", json.dumps(updated))
        got = self.body_of(self.call("GET", "/admin/tokens/{id}", params={"id": t2["token"]["id"]}, expect=200,
                                     label="after PATCH"), "get token 2")
        self.expect(got == updated["token"], "getToken after updateToken: the updated token",
                    f"PATCH answered {json.dumps(updated['token'])}, GET {json.dumps(got)}")
        t2["token"] = got
        self.call("PATCH", "/admin/tokens/{id}", params={"id": unknown}, body={"abilities": ["read"]},
                  expect=404, label="unknown id")
        self.call("PATCH", "/admin/tokens/{id}", params={"id": "abc"}, body={"abilities": ["read"]},
                  expect=400, valid=False, label="non-numeric id")
        self.call("PATCH", "/admin/tokens/{id}", params={"id": t2["token"]["id"]},
                  raw_body=b'{"abilities": [', expect=400, valid=False, label="malformed JSON")

        # listing
        alices = [t1["token"]["id"], t2["token"]["id"], t3["token"]["id"]]
        listed = self.walk("/admin/tokens", {"user": alice}, 1, "listTokens user=alice limit=1")
        self.expect([t["id"] for t in listed] == sorted(alices), "listTokens user=: the user's tokens by id",
                    f"got {[t['id'] for t in listed]}, want {sorted(alices)}")
        self.expect(all(t["user"] == alice for t in listed), "listTokens user=: no other user's tokens")
        by_id = {t["id"]: t for t in listed}
        self.expect(by_id.get(t2["token"]["id"]) == t2["token"], "listTokens: the items are the tokens",
                    json.dumps(by_id.get(t2["token"]["id"])))
        listed = self.walk("/admin/tokens", {"user": bob}, 2, "listTokens user=bob limit=2")
        self.expect([t["id"] for t in listed] == [tb["token"]["id"]], "listTokens user=bob: bob's one token",
                    json.dumps(listed))
        listed = self.walk("/admin/tokens", {}, 2, "listTokens limit=2")
        all_ids = [t["id"] for t in listed]
        self.expect(all_ids == sorted(set(all_ids)), "listTokens: ascending ids, no repeats", str(all_ids))
        self.expect(set(ids) <= set(all_ids), "listTokens: every created token", f"{ids} not in {all_ids}")
        page = self.body_of(self.call("GET", "/admin/tokens", query={"after": t1["token"]["id"], "user": alice},
                                      expect=200, label="after an id"), "list tokens after")
        self.expect([t["id"] for t in page["data"]] == sorted(alices)[1:],
                    "listTokens after=<id>: only the ids after it", json.dumps(page)[:300])
        for query, what in (({"limit": "0"}, "limit=0"), ({"limit": "1001"}, "limit=1001"),
                            ({"limit": "x"}, "limit=x"), ({"after": "abc"}, "after=abc"),
                            ({"after": "-1"}, "after=-1")):
            self.call("GET", "/admin/tokens", query=query, expect=400, valid=False, label=what)

        # revoking
        self.call("DELETE", "/admin/tokens/{id}", params={"id": t1["token"]["id"]}, expect=204)
        self.call("GET", "/admin/tokens/{id}", params={"id": t1["token"]["id"]}, expect=404, label="revoked")
        self.call("DELETE", "/admin/tokens/{id}", params={"id": t1["token"]["id"]}, expect=404, label="again")
        self.call("DELETE", "/admin/tokens/{id}", params={"id": "abc"}, expect=400, valid=False,
                  label="non-numeric id")
        listed = self.walk("/admin/tokens", {"user": alice}, 100, "listTokens after revoking one")
        self.expect([t["id"] for t in listed] == sorted(alices[1:]), "revokeToken: the token is gone from the list",
                    json.dumps([t["id"] for t in listed]))
        return {"alice": [t1["token"], t2["token"], t3["token"]], "bob": [tb["token"]]}

    def mint_session(self, user: str, label: str) -> dict[str, Any]:
        answer = self.call("POST", "/admin/sessions", body={"user": user}, expect=201, label=label)
        created = self.body_of(answer, "mint a session")
        value = created["cookie"]["value"]
        where = f"POST /admin/sessions [{label}]"
        self.shown_once[value] = where
        cookie_hash = hashlib.sha256(value.encode()).hexdigest()
        self.never[cookie_hash] = f"the stored hash of the session cookie of {where}"
        self.expect(created["session"]["user"] == user, f"createSession [{label}]: for the user asked",
                    json.dumps(created["session"]))
        self.expect(created["session"]["id"] != cookie_hash,
                    f"createSession [{label}]: the id is not the cookie's hash")
        self.expect(bool(created["cookie"]["name"]), f"createSession [{label}]: a cookie name")
        return created

    def session_checks(self, prefix: str, alice: str) -> None:
        s1 = self.mint_session(alice, "first")
        s2 = self.mint_session(alice, "second")
        self.expect(s1["session"]["id"] != s2["session"]["id"], "createSession: distinct ids")
        self.call("POST", "/admin/sessions", body={"user": f"{prefix}-nobody"}, expect=404,
                  label="unknown user")
        self.call("POST", "/admin/sessions", body={"user": "has a space"}, expect=(404, 422), valid=False,
                  label="invalid user name")
        self.call("POST", "/admin/sessions", raw_body=b"{user: 1}", expect=400, valid=False,
                  label="malformed JSON")

        listed = self.body_of(self.call("GET", "/admin/users/{name}/sessions", params={"name": alice},
                                        expect=200), "list sessions")["data"]
        self.expect(sorted(s["id"] for s in listed) == sorted([s1["session"]["id"], s2["session"]["id"]]),
                    "listUserSessions: both minted sessions", json.dumps(listed))
        self.expect(all(s["user"] == alice for s in listed), "listUserSessions: only the user's sessions")
        self.call("GET", "/admin/users/{name}/sessions", params={"name": f"{prefix}-nobody"}, expect=404,
                  label="unknown user")

        self.call("DELETE", "/admin/sessions/{id}", params={"id": s1["session"]["id"]}, expect=204)
        self.call("DELETE", "/admin/sessions/{id}", params={"id": s1["session"]["id"]}, expect=404,
                  label="again")
        self.call("DELETE", "/admin/sessions/{id}", params={"id": "0" * 64}, expect=404, label="unknown id")
        self.call("DELETE", "/admin/sessions/{id}", params={"id": "not-a-session-id"}, expect=404,
                  valid=False, label="malformed id")
        listed = self.body_of(self.call("GET", "/admin/users/{name}/sessions", params={"name": alice},
                                        expect=200, label="after revoking one"), "list sessions")["data"]
        self.expect([s["id"] for s in listed] == [s2["session"]["id"]],
                    "revokeSession: only the other session is left", json.dumps(listed))

        revoked = self.body_of(self.call("DELETE", "/admin/users/{name}/sessions", params={"name": alice},
                                         expect=200), "revoke all")
        self.expect(revoked == {"revoked": 1}, "revokeUserSessions: one session ended", json.dumps(revoked))
        revoked = self.body_of(self.call("DELETE", "/admin/users/{name}/sessions", params={"name": alice},
                                         expect=200, label="again"), "revoke all")
        self.expect(revoked == {"revoked": 0}, "revokeUserSessions again: nothing left", json.dumps(revoked))
        self.call("DELETE", "/admin/users/{name}/sessions", params={"name": f"{prefix}-nobody"}, expect=404,
                  label="unknown user")
        listed = self.body_of(self.call("GET", "/admin/users/{name}/sessions", params={"name": alice},
                                        expect=200, label="after revoking all"), "list sessions")["data"]
        self.expect(listed == [], "revokeUserSessions: no session left", json.dumps(listed))
        # One more, for deleteUser to remove.
        self.mint_session(alice, "third, for deleteUser")

    # ------------------------------------------------------------------ final checks

    def leak_checks(self) -> None:
        leaks = []
        for label, text in self.bodies:
            for secret, what in self.never.items():
                if secret in text:
                    leaks.append(f"{label}: contains {what}")
            for secret, allowed in self.shown_once.items():
                if secret in text and label != allowed:
                    leaks.append(f"{label}: contains a secret shown only by {allowed}")
            if "$argon2" in text:
                leaks.append(f"{label}: contains an argon2 hash")
        self.expect(not leaks, f"no secret in any of {len(self.bodies)} responses "
                               f"({len(self.never)} hashes/passwords, {len(self.shown_once)} shown-once secrets)",
                    "; ".join(sorted(set(leaks))[:20]))

    def coverage_checks(self) -> None:
        for op_key in sorted(self.operations, key=lambda k: (k[1], k[0])):
            method, template = op_key
            op_id = self.operations[op_key].get("operationId", "?")
            if op_key not in self.called:
                self.fail(f"operation {op_id} ({method} {template}) was never called: add it to check.py")
            elif op_key not in self.succeeded:
                self.fail(f"operation {op_id} ({method} {template}) never answered with a success")
            else:
                self.ok(f"operation {op_id} ({method} {template}) exercised")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the admin listener, http://127.0.0.1:PORT")
    parser.add_argument("--key", required=True, help="the admin key")
    parser.add_argument("--spec", required=True, help="the OpenAPI description (JSON)")
    args = parser.parse_args()
    if not args.key:
        print("--key must not be empty", file=sys.stderr)
        return 2
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    # The spec itself must be usable: every schema in it must be a valid 2020-12 schema.
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        try:
            Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            print(f"FAIL  spec: components.schemas.{name} is not a valid schema: {e.message}")
            return 1

    checker = Checker(base=args.base.rstrip("/"), key=args.key, spec=spec)
    aborted = None
    try:
        checker.run()
    except Abort as e:
        aborted = str(e)
    except Exception:  # a bug in the script or an answer it cannot read: report, don't hide
        aborted = "unexpected error:\n" + traceback.format_exc()
    if aborted:
        checker.fail(f"aborted: {aborted}")
    checker.leak_checks()
    checker.coverage_checks()

    print()
    if checker.failures:
        print(f"{len(checker.failures)} of {checker.checks} checks FAILED:")
        for failure in checker.failures:
            print(f"  - {failure}")
        return 1
    print(f"all {checker.checks} checks passed ({len(checker.operations)} operations, "
          f"{len(checker.bodies)} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
