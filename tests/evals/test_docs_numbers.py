"""docs/evals.md quotes the committed results, not numbers typed by hand."""

import re
from pathlib import Path

import pytest

from cortexmem.evals.report import load_results, mqar_summary_markdown

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- zoology-summary: (\S+) -->\n(.*?)<!-- /zoology-summary -->", re.S)


def test_zoology_table_in_docs_is_the_committed_results():
    match = BLOCK.search((ROOT / "docs" / "evals.md").read_text(encoding="utf-8"))
    assert match, "docs/evals.md lost its zoology-summary block"
    run_dir = ROOT / match.group(1)
    if not (run_dir / "results.json").is_file():
        assert match.group(2).strip() == "", "docs quote a zoology table without a committed results.json"
        pytest.skip(f"no {run_dir.relative_to(ROOT)}/results.json committed yet")
    assert match.group(2) == mqar_summary_markdown(load_results(run_dir))
