"""docs/evals.md quotes the committed results, not numbers typed by hand."""

import re
from pathlib import Path

import pytest

from cortexmem.evals.report import load_results, mqar_summary_markdown

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- (zoology|mqar)-summary: (\S+) -->\n(.*?)<!-- /\1-summary -->", re.S)
BLOCKS = {m.group(2): m for m in BLOCK.finditer((ROOT / "docs" / "evals.md").read_text(encoding="utf-8"))}


def test_docs_keep_their_result_tables():
    assert "docs/figures/zoology_h100" in BLOCKS, "docs/evals.md lost its zoology-summary block"
    assert len(BLOCKS) >= 3, sorted(BLOCKS)


@pytest.mark.parametrize("where", sorted(BLOCKS))
def test_result_tables_in_docs_are_the_committed_results(where):
    match = BLOCKS[where]
    run_dir = ROOT / where
    if not (run_dir / "results.json").is_file():
        assert match.group(3).strip() == "", f"docs quote a table of {where} without a committed results.json"
        pytest.skip(f"no {run_dir.relative_to(ROOT)}/results.json committed yet")
    assert match.group(3) == mqar_summary_markdown(load_results(run_dir))
