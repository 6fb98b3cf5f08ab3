"""The README's result blocks are generated from committed results, and CI checks them."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalepool.cli import main
from scalepool.studies import readme_blocks, stale_blocks, write_readme

REPO = Path(__file__).resolve().parents[3]

REPORT = """# scalepool reproduction (quick)

- commit: `abc`; created 2026-12-03
- run folder: `/tmp/run`

## Scale layer on the test split (force MAE, meV/Å)

| method | overall |
| --- | --- |
| long only (s=1) | 31.1 |

## Figures

![x](x.png)
"""


def _readme(tmp_path, body="stale\n"):
    path = tmp_path / "README.md"
    path.write_text(
        "# title\n\n<!-- BEGIN generated:quick-results -->\n"
        + body
        + "<!-- END generated:quick-results -->\ntail\n"
    )
    return path


def test_blocks_come_from_the_report(tmp_path):
    (tmp_path / "report.md").write_text(REPORT)
    blocks = readme_blocks(tmp_path)
    assert blocks["quick-results"].startswith("### Scale layer on the test split")
    assert (
        "| long only (s=1) | 31.1 |" in blocks["quick-results"] and "Figures" not in blocks["quick-results"]
    )
    assert blocks["quick-provenance"] == "- commit: `abc`; created 2026-12-03\n"  # no run folder path


def test_check_fails_on_a_stale_block_and_write_mends_it(tmp_path, capsys):
    (tmp_path / "report.md").write_text(REPORT)
    readme = _readme(tmp_path)
    assert stale_blocks(readme, tmp_path) == ["quick-results"]
    assert main(["readme", "--check", "--readme", str(readme), "--results", str(tmp_path)]) == 1
    assert write_readme(readme, tmp_path) == ["quick-results"]
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("tail\n") and "31.1" in text and "stale" not in text
    assert main(["readme", "--check", "--readme", str(readme), "--results", str(tmp_path)]) == 0
    # a hand edit of a generated number is caught
    readme.write_text(text.replace("31.1", "30.1"))
    assert stale_blocks(readme, tmp_path) == ["quick-results"]


def test_unknown_block_is_an_error(tmp_path):
    (tmp_path / "report.md").write_text(REPORT)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:nope -->\nx\n<!-- END generated:nope -->\n")
    with pytest.raises(ValueError, match="have no generator"):
        stale_blocks(readme, tmp_path)


def test_repository_readme_matches_committed_results():
    """What CI checks: every number in the README's generated blocks is what results/quick/ gives."""
    assert stale_blocks(REPO / "README.md", REPO / "results" / "quick") == []
