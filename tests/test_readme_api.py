"""The README's Python API block runs as it stands: extracted from README.md (the fenced python block
under "## Python API") and executed in a temporary working directory with a fresh DEPLOYVIT_HOME."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_the_readme_python_api_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch

    torch.set_num_threads(1)
    exec(compile(api_block(), "README.md (Python API)", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "runs").is_dir()


def test_import_deployvit_imports_neither_torch_nor_numpy():
    code = "import sys, deployvit; deployvit.__version__; print([m for m in ('torch', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_api_names_resolve_and_deployvit_search_stays_callable():
    import deployvit
    import deployvit.search.run  # binds the package as deployvit.search: it must still be the search function too

    assert callable(deployvit.search) and deployvit.search.run.SearchRequest is not None
    for name in deployvit.__all__:
        assert getattr(deployvit, name) is not None, name
    assert set(dir(deployvit)) >= set(deployvit.__all__)
