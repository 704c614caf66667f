"""Packaging: pipelines/ and configs/ install inside the package; README Quickstart and .ci/run agree."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_pipelines_and_configs_are_subpackages() -> None:
    pipelines = importlib.import_module("medcnn.pipelines")
    configs = importlib.import_module("medcnn.configs")
    assert Path(pipelines.__file__).parent.name in ("pipelines",)
    assert configs.config_dir().is_dir()


def _quickstart_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^#+\s*Quick\s*start.*?$(.*?)(?=^#{1,2}\s|\Z)", text, re.M | re.S | re.I)
    assert m, "README.md has no Quickstart section"
    return re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", m.group(1), re.S)


def test_ci_runs_exactly_the_readme_test_block() -> None:
    blocks = _quickstart_blocks()
    assert len(blocks) >= 2
    assert "medcnn demo" in blocks[0] or "medcnn predict" in blocks[0]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    body = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]
    block = [ln.strip() for ln in blocks[1].splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert body == block


def test_cpu_install_path_pins_the_local_torch_wheel() -> None:
    for block in _quickstart_blocks()[:2]:
        assert "pip install torch==" in block.replace("  ", " ")
        first_torch = block.index("torch==")
        medcnn_install = re.search(r"pip install \"?\.", block)
        assert medcnn_install and first_torch < medcnn_install.start(), "torch must be installed before medcnn"


@pytest.mark.slow
def test_wheel_contains_pipelines_and_configs_inside_medcnn(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {res.stderr[-300:]}")
    (whl,) = tmp_path.glob("medcnn-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "medcnn/pipelines/__init__.py" in names
    assert "medcnn/configs/__init__.py" in names
    assert any(n.startswith("medcnn/data/mni152/") and n.endswith(".nii.gz") for n in names)
    # the sample cases ship inside the package (medcnn demo and the bundled configs from any folder)
    assert "medcnn/sample_data/__init__.py" in names and "medcnn/foreign/__init__.py" in names
    assert any(n.startswith("medcnn/sample_data/brain-tumor/") and n.endswith("-seg.nii.gz") for n in names)
    assert any(n.startswith("medcnn/sample_data/alzheimer/sub-001/anat/") for n in names)
    assert any(n.startswith("medcnn/sample_data/dicom/t1_series/") for n in names)
    assert not any(n.startswith("sample_data/") for n in names)
    assert not any(n.startswith("pipelines/") or n.startswith("configs/") for n in names)


def test_source_checkout_imports_like_the_installed_package() -> None:
    """``python -m medcnn...`` / ``torchrun -m`` from the repository root must still find the pipelines."""
    code = "import medcnn.pipelines as p, medcnn.configs as c; print(p.available()); print(c.config_dir())"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1000:]
    assert "brain-tumor" in res.stdout


def test_every_source_package_is_listed_for_the_wheel() -> None:
    """A package folder missing from pyproject's list imports in an editable install but not after ``pip install .``."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "medcnn").rglob("__init__.py")}
    found |= {f"medcnn.pipelines.{'.'.join(p.parent.relative_to(root / 'pipelines').parts)}".rstrip(".")
              for p in (root / "pipelines").rglob("__init__.py")}
    missing = sorted(name for name in found if name not in listed and "__pycache__" not in name)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
