"""A plain `pip install -e .` runs the package: its imports and what its libraries load at run
time come from the runtime dependencies declared in pyproject.toml.

The installed environment has the test extras too (torch brings jinja2, which transformers
needs for chat templates), so the chat prompt path is also run in a subprocess that sees only
the declared runtime dependencies and what they require, linked into a fresh directory.
"""

import ast
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "entropy_rl"
QWEN3_TOKENIZER = REPOSITORY / "tests" / "data" / "qwen3_tokenizer"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {_normal(Requirement(r).name) for r in requirements}


def runtime_closure() -> set[str]:
    """The declared runtime dependencies and, from the installed metadata, everything they
    require (markers evaluated here, no extras)."""
    seen, stack = set(), sorted(_names(_project()["dependencies"]))
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(_normal(requirement.name))
    return seen


def third_party_imports() -> dict[str, str]:
    """{top-level module: a package file importing it} for every absolute import of the package
    (module level or inside functions) outside the standard library."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top != "entropy_rl" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(REPOSITORY)))
    return found


def test_every_import_of_the_package_is_a_declared_dependency():
    project = _project()
    optional = {extra: _names(reqs) for extra, reqs in project["optional-dependencies"].items() if extra != "test"}
    declared = _names(project["dependencies"]).union(*optional.values())
    distributions = metadata.packages_distributions()
    undeclared = {module: where for module, where in third_party_imports().items()
                  if not {_normal(d) for d in distributions.get(module, [module])} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml (dependencies or a non-test extra): {undeclared}"


def _link_runtime_environment(directory: Path) -> None:
    """Symlinks in `directory` to the installed files of the runtime closure's distributions
    (top-level packages, modules, .dist-info and bundled-library directories)."""
    for name in sorted(runtime_closure()):
        distribution = metadata.distribution(name)
        site = Path(distribution.locate_file(""))
        for top in {Path(f).parts[0] for f in distribution.files or []}:
            source, target = site / top, directory / top
            if top != ".." and source.exists() and not target.exists():
                target.symlink_to(source)


@pytest.mark.slow
def test_chat_prompts_run_with_only_the_runtime_dependencies(tmp_path):
    _link_runtime_environment(tmp_path)
    script = ("from entropy_rl.data import Problem, format_prompt, load_tokenizer\n"
              f"tokenizer = load_tokenizer({str(QWEN3_TOKENIZER)!r})\n"
              "print(format_prompt(Problem('p', 'Compute 2+3.', '5'), tokenizer, style='chat'))\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPOSITORY)])
    result = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "<|im_start|>user\nCompute 2+3." in result.stdout
