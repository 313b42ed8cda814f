"""The README's first Public API block runs as written, in a fresh interpreter at JAX's default settings."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_public_api_snippet_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Public API"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)[1]
    (tmp_path / "snippet.py").write_text(snippet)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # a user's settings, not the suite's optimization level 0
    result = subprocess.run([sys.executable, str(tmp_path / "snippet.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 100) float32"
