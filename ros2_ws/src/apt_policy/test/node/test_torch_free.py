"""The node's modules (robot path) never import torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_node_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import apt_policy.ros.policy_node, apt_policy.bench.stream, apt_policy.ros.control_setup\n"
        "import apt_policy.control.inference_worker, apt_policy.control.observations\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
