"""Flask/Werkzeug upstream for tests/frameworks.rs: answers every path and method with JSON
of what Flask saw, and counts the requests it ran (GET /__seen, asked directly, not through
tokengate). Run with Debian's python3-flask: /usr/bin/python3 flask_app.py PORT."""

import sys
import threading

from flask import Flask, jsonify, request

app = Flask(__name__)
lock = threading.Lock()
ran = 0
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@app.route("/__seen")
def seen():
    return jsonify(count=ran)


@app.route("/", defaults={"rest": ""}, methods=METHODS)
@app.route("/<path:rest>", methods=METHODS)
def catch_all(rest):
    global ran
    with lock:
        ran += 1
    environ = request.environ
    return jsonify(
        framework="flask",
        method=request.method,
        path=request.path,
        environ={k: v for k, v in environ.items() if k.startswith("HTTP_")},
        headers=dict(request.headers),
        cookies=request.cookies.to_dict(),
    )


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
