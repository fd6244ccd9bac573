"""docs/rl.md quotes the committed bench results, not numbers typed by hand."""

import re
from pathlib import Path

import pytest

from cortexmem.rl.bench import load_results, table_markdown

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- rl-table: (\S+) -->\n(.*?)<!-- /rl-table -->", re.S)
BLOCKS = {m.group(1): m.group(2) for m in BLOCK.finditer((ROOT / "docs" / "rl.md").read_text(encoding="utf-8"))}


def test_docs_keep_their_result_tables():
    assert len(BLOCKS) >= 2, sorted(BLOCKS)


@pytest.mark.parametrize("where", sorted(BLOCKS))
def test_result_tables_in_docs_are_the_committed_results(where):
    data = load_results(ROOT / where / "results.json")
    assert BLOCKS[where] == table_markdown(data["runs"])
