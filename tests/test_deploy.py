"""deploy/: the HAProxy configurations are valid for Debian's HAProxy, and the compose and Kubernetes files parse
and agree with the settings they set. (Only deploy/haproxy.cfg is also run, by tests/app/test_cluster.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks.cluster_rig import _need
from engine.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def haproxy_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_need("haproxy"), "-c", "-f", str(config)], env=env, capture_output=True, text=True)


def test_haproxy_cfg_is_valid(tmp_path: Path) -> None:
    env = {"PARASTREAM_LB_BIND": "127.0.0.1:1", "HAPROXY_STATS_SOCKET": str(tmp_path / "s"),
           "PARASTREAM_NODE1": "127.0.0.1:2", "PARASTREAM_NODE2": "127.0.0.1:3",
           "PARASTREAM_NODE1_AGENT": "4", "PARASTREAM_NODE2_AGENT": "5"}
    checked = haproxy_check(DEPLOY / "haproxy.cfg", env)
    assert checked.returncode == 0, checked.stderr


def test_kubernetes_sketch_parses_and_its_haproxy_config_is_valid(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("StatefulSet") == 1 and "ConfigMap" in kinds
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["haproxy.cfg"]
    # No cluster DNS here: the resolvers section gets a nameserver of its own for the check.
    (tmp_path / "haproxy.cfg").write_text(config.replace("parse-resolv-conf", "nameserver dns 127.0.0.1:53"))
    checked = haproxy_check(tmp_path / "haproxy.cfg", {})
    assert checked.returncode == 0, checked.stderr
    # The routing rules are deploy/haproxy.cfg's.
    for rule in ("stick store-response res.hdr(X-Parastream-Session)", "stick match path,field(4,/) if session_path"):
        assert rule in config and rule in (DEPLOY / "haproxy.cfg").read_text()


@pytest.mark.parametrize("name", ["compose.yaml", "kubernetes.yaml"])
def test_deploy_files_set_only_real_settings(name: str) -> None:
    text = (DEPLOY / name).read_text()
    known = {f"PARASTREAM_{field.upper()}" for field in Settings.model_fields}
    used = set(re.findall(r"\b(PARASTREAM_[A-Z0-9_]+)\b", text))
    env_only = {"PARASTREAM_LB_BIND", "PARASTREAM_NODE1", "PARASTREAM_NODE2", "PARASTREAM_NODE1_AGENT",
                "PARASTREAM_NODE2_AGENT", "PARASTREAM_MODELS_DIR"}  # haproxy.cfg's and compose's own variables
    assert used - env_only <= known, used - env_only - known
