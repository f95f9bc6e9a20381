"""The project's promises about itself: every study is tested, CI runs the README's command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPPORT_MODULES = {"__init__", "common", "classifier"}  # helpers of the studies, not studies


def studies() -> set[str]:
    """Every study: a module of analysis/, or a package with a __main__.py (zero_error_1d)."""
    modules = {p.stem for p in (ROOT / "analysis").glob("*.py")} - SUPPORT_MODULES
    packages = {p.parent.name for p in (ROOT / "analysis").glob("*/__main__.py")}
    return modules | packages


def test_every_study_has_a_test():
    studies_found = studies()
    assert "zero_error_1d" in studies_found and "ring" in studies_found
    test_text = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    untested = sorted(s for s in studies_found if not re.search(rf"\b{s}\.main\(", test_text))
    assert not untested, f"studies without a smoke test calling <study>.main(...): {untested}"


def test_every_study_is_a_runnable_module_with_a_docstring():
    for name in studies():
        package = ROOT / "analysis" / name
        path = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
        text = path.read_text()
        assert text.lstrip().startswith(('"""', 'r"""')), f"{path.name}: module docstring"
        runnable = (package / "__main__.py").is_file() or 'if __name__ == "__main__":' in text
        assert runnable, f"{path}: python -m analysis.{name}"


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start, flags=re.S)


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, test_command = commands
    assert "pyro-vae train vae" in main_job and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci


def test_readme_links_to_files_in_the_repository_resolve():
    # figures and result files quoted by the README must be committed, not left in results/
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", readme)
    assert targets, "the README links its figures"
    missing = sorted({t for t in targets if not (ROOT / t.split("#")[0]).exists()})
    assert not missing, f"README links to files that do not exist: {missing}"


def test_compute_totals_add_every_model_of_a_study():
    from analysis.common import compute_totals

    results = {
        "seconds": 5.0,
        "models": [
            {"train_seconds": 100.0, "eval_seconds": 10.0},
            {"train_seconds": 50.0, "eval_seconds": 1.5},
        ],
        "trained": {"runs": {"a": {"train_seconds": 7.0}}},
    }
    assert compute_totals(results) == {
        "training_seconds": 157.0, "evaluation_seconds": 11.5, "invocation_seconds": 5.0
    }  # fmt: skip


def test_stored_study_results_state_their_total_compute():
    import json

    for name in ("latent_dim", "prior_scale", "sigma_regularizer"):
        compute = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())["compute"]
        assert compute["training_seconds"] > compute["invocation_seconds"] or name == "latent_dim", name
        assert compute["training_seconds"] > 600, name  # minutes of training behind every table
