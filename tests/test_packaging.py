"""pyproject.toml and environment.yml name the same dependencies; the book's files are consistent."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# pip name → conda name where they differ
CONDA_NAME = {"torch": "pytorch", "faiss-cpu": "faiss-gpu"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower()


def pyproject_deps() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {_name(d) for d in meta["dependencies"]}
    for extra in ("book", "test"):
        deps |= {_name(d) for d in meta["optional-dependencies"][extra]}
    return deps


def environment_deps() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(d) for d in dep.get("pip", [])}
        else:
            names.add(_name(dep))
    return names


def test_every_dependency_is_in_both_files():
    env = environment_deps()
    py = pyproject_deps()
    missing_in_env = {d for d in py if CONDA_NAME.get(d, d) not in env}
    assert not missing_in_env, (
        f"in pyproject.toml but not in environment.yml: {sorted(missing_in_env)}"
    )
    reverse = {v: k for k, v in CONDA_NAME.items()}
    extra_in_env = {
        d for d in env - {"python", "pip", "pytorch-cuda"} if reverse.get(d, d) not in py
    }
    assert not extra_in_env, f"in environment.yml but not in pyproject.toml: {sorted(extra_in_env)}"


def test_dependencies_have_lower_bounds_only():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in meta["dependencies"]:
        assert "==" not in req and "<" not in req, (
            f"{req}: use lower bounds only (Colab keeps its own torch)"
        )
    assert any(
        r.startswith("jupyter-book") and "<2" in r for r in meta["optional-dependencies"]["book"]
    )


def test_toc_chapters_exist_and_notebooks_carry_no_widget_state():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for p in toc["parts"] for c in p["chapters"]]
    for f in files:
        assert (ROOT / f"{f}.ipynb").is_file() or (ROOT / f"{f}.md").is_file(), (
            f"{f} is in _toc.yml but missing"
        )
    for nb in (ROOT / "book").glob("*.ipynb"):
        assert "application/vnd.jupyter.widget-state+json" not in nb.read_text(), (
            f"{nb.name} carries widget state"
        )


def test_config_renders_what_was_committed():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert cfg["html"]["use_repository_button"] is True
    assert (ROOT / cfg["bibtex_bibfiles"][0]).is_file()


def test_every_chapter_starts_with_the_same_colab_setup_cell():
    """The rocket button opens one notebook alone: its first code cell must install cdrlib when it is missing."""
    firsts = {}
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        first = next(c for c in cells if c["cell_type"] == "code")
        firsts[nb.name] = "".join(first["source"])
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    for name, source in firsts.items():
        assert 'find_spec("cdrlib") is None' in source and repo in source, (
            f"{name}: no setup cell first"
        )
    assert len(set(firsts.values())) == 1, "the chapters' setup cells differ: keep them identical"


def test_every_figure_has_a_caption():
    """A cell that draws a figure carries its caption in the MyST-NB cell metadata."""
    missing = []
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            draws = any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
            figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
            if draws and not figure.get("caption"):
                missing.append(f"{nb.name}: {''.join(cell['source'])[:60]!r}")
    assert not missing, "figures without a caption:\n" + "\n".join(missing)


def test_no_code_line_wider_than_the_code_box():
    """The rendered code box holds about 100 characters: cdrlib and every chapter's code stay within."""
    wide = []
    for path in sorted((ROOT / "cdrlib").rglob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > 100:
                wide.append(f"{path.relative_to(ROOT)}:{i}")
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for k, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                wide += [
                    f"{nb.name} cell {k}"
                    for line in "".join(cell["source"]).splitlines()
                    if len(line) > 100
                ]
    assert not wide, "lines wider than 100 characters:\n" + "\n".join(wide[:30])


def test_ruff_finds_nothing():
    """The lint rules of pyproject.toml ([tool.ruff]) hold for the library and the chapters."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    done = subprocess.run(
        [ruff, "check", "cdrlib", "book"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]


# Numbers the prose may state without an output beside them: worked examples, published results,
# settings and constants. Every other number in a chapter's text must appear in its code or outputs.
QUOTED = {
    "01_data.ipynb": {
        "30%": "the split's setting",
        "4.0": "a licence (CC BY 4.0)",
        "2.0": "a licence",
    },
    "02_metrics.ipynb": {
        "01": "a chapter number",
        "100": "the benchmark's settings (top 100, 100 classes)",
        "0.633": "a worked example",
        "0.417": "a worked example",
    },
    "04_cluster_contrastive.ipynb": {
        "1.4": "a licence",
        "2.0": "a licence",
        "224": "an image size",
        "38.14": "published",
        "41.57": "published",
        "42.23": "published",
        "44.61": "published",
    },
    "05_dod_alignment.ipynb": {
        "38.14": "published",
        "44.61": "published",
        "256": "faiss's sample of points per centroid",
    },
    "07_pcme.ipynb": {
        "45.0": "published",
        "68.8": "published",
        "40.3": "published",
        "66.7": "published",
        "312": "CUB's attribute count",
        "128": "the configuration's batch size (PCMEConfig)",
    },
    "08_icfrr.ipynb": {
        "0.695": "published",
        "0.754": "published",
        "0.777": "published",
        "0.836": "published",
        "40%": "the analysis's threshold",
    },
    "own_images.ipynb": {
        "04": "a chapter number",
        "05": "a chapter number",
        "224": "an image size",
        "30%": "the loader's default",
    },
}
NUMBER = re.compile(r"(?<![\w.$\\{^_])(\d+\.\d+|\d+(?:,\d{3})+|\d+ ?%|\d{2,})(?![\w.])")


def test_numbers_in_the_prose_come_from_the_outputs():
    """A number the text states is printed by the chapter itself (or is a quoted constant above), so
    that prose cannot drift from what the code computes."""
    stray = []
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        seen = ""
        for cell in cells:
            if cell["cell_type"] == "code":
                seen += "".join(cell["source"])
                for out in cell.get("outputs", []):
                    seen += "".join(out.get("text", "")) + "".join(
                        out.get("data", {}).get("text/plain", "")
                    )
                    seen += "".join(out.get("data", {}).get("text/html", ""))
        for cell in cells:
            if cell["cell_type"] != "markdown":
                continue
            text = re.sub(
                r"\$[^$]*\$|`[^`]*`|\{cite\}`[^`]*`|\]\([^)]*\)", "", "".join(cell["source"])
            )
            for m in NUMBER.finditer(text):
                value = m.group(1).replace(" %", "%")
                if value not in seen and value not in QUOTED.get(nb.name, {}):
                    stray.append(
                        f"{nb.name}: {value} in …{text[max(0, m.start() - 60) : m.end() + 20]!r}"
                    )
    assert not stray, "numbers in the prose that no output shows:\n" + "\n".join(stray)


@pytest.mark.slow
def test_a_plain_install_finds_the_repository_from_the_working_directory(tmp_path):
    """``pip install <repo>`` copies the package alone: run from the repository (a chapter runs in
    book/), it still finds the embedded data; elsewhere CDR_REPO names the repository."""
    copy = tmp_path / "site" / "cdrlib"
    shutil.copytree(ROOT / "cdrlib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    code = "from cdrlib.paths import REPO_ROOT; print(REPO_ROOT)"
    env = {"PYTHONPATH": str(copy.parent), "PATH": "/usr/bin:/bin"}
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "book", env=env, capture_output=True, text=True
    )
    assert found.stdout.strip() == str(ROOT), found.stderr
    named = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "CDR_REPO": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert named.stdout.strip() == str(ROOT), named.stderr


def test_chapters_import_only_base_dependencies_unguarded():
    """A chapter imports an extra (POT, torchmetrics, …) only inside try/except ImportError, so that
    the rocket button's base install runs it."""
    base = {
        _name(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    allowed = base | {"cdrlib", "IPython", "PIL"} | set(sys.stdlib_module_names)
    module_of = {
        "torch": "torch",
        "torchvision": "torchvision",
        "faiss": "faiss-cpu",
        "sklearn": "scikit-learn",
        "matplotlib": "matplotlib",
        "numpy": "numpy",
        "pandas": "pandas",
        "scipy": "scipy",
        "timm": "timm",
        "tqdm": "tqdm",
        "yaml": "pyyaml",
    }
    bad = []
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            guarded = "except ImportError" in src
            for m in re.finditer(r"^\s*(?:from|import) ([\w]+)", src, re.M):
                top = m.group(1)
                if module_of.get(top, top) not in allowed and top not in allowed and not guarded:
                    bad.append(f"{nb.name}: {top}")
    assert not bad, "unguarded imports of extras:\n" + "\n".join(bad)


WORKSHOP_WORDS = ("METHODS.md", "DATASET.md", "STYLE.md", "shared/", "the seed formulation", "seed form",
                  "DoD (seed)", "seed DoD", "the write-up", "the project's target", "30× target")


def test_no_reference_to_files_or_words_outside_the_repository():
    """The book and the library cite nothing a reader of the repository lacks (the team's notes) and
    name variants by what they are, not by where they came from in our workshop."""
    found = []
    files = [*ROOT.glob("book/*.md"), *ROOT.glob("book/*.ipynb"), *ROOT.rglob("cdrlib/**/*.py"), ROOT / "README.md"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(ROOT)}: {w!r}" for w in WORKSHOP_WORDS if w in text]
    assert not found, "\n".join(found)
