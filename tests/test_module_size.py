"""No module of the product or its tooling grows past about 400 lines (issue "One thing, one
place"): a module that long holds several jobs, and the next change to one of them has to be
read among the others. When this fails, split the module along its jobs (docs/layout.md says
which module owns what) instead of raising the limit."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("plugins", "dev", "dags")
LIMIT = 420  # "about 400": a docstring or a few lines of slack, not a second job


def _line_counts() -> dict[str, int]:
    counts = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            counts[str(path.relative_to(ROOT))] = len(path.read_text(encoding="utf-8").splitlines())
    return counts


def test_every_module_is_at_most_about_400_lines():
    counts = _line_counts()
    assert len(counts) > 50, f"found only {len(counts)} modules under {SOURCES}: the walk is wrong"
    too_long = {name: lines for name, lines in counts.items() if lines > LIMIT}
    assert not too_long, f"modules over {LIMIT} lines (split them by job): {too_long}"
