"""``cortex bench-report``: markdown from a bench.json (date, GPU, goals, cells, gated delta), written into the
generated part of a doc and nowhere else."""

from __future__ import annotations

import json

import pytest

from cortexmem.tools.bench_report import BEGIN, END, render, update_doc


def _row(name, kind="ours", status="ok", extra=None, **kw):
    base = dict(fwd_bwd_ms=None, fwd_bwd_graph_ms=None, step_ms=None, step_graph_ms=None, step_graph_compiled_ms=None,
                first_call_s=None, peak_mem_mb=None)
    return {"name": name, "kind": kind, "status": status, "extra": extra or {}, **base, **kw}


DATA = {
    "meta": {"date": "2027-01-02", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0"},
    "precision": {"tf32": "on"}, "params": {"batch": 32, "seq": 256, "d": 256},
    "rows": [_row("cell:conv", fwd_bwd_ms=2.0, fwd_bwd_graph_ms=1.0),
             _row("peer:cortexcore-cell:conv", "peer", fwd_bwd_ms=1.5),
             _row("stack:4xAXMS", fwd_bwd_ms=100.0, step_graph_compiled_ms=1.62, extra={"step_compile_s": 55.0}),
             _row("peer:cortexcore-4xAXMS", "peer", status="not installed (ModuleNotFoundError)"),
             _row("gated_delta:ours B4xT8192xH16xD128", fwd_bwd_ms=183.0, extra={"fwd_ms": 1.5}),
             _row("gated_delta:fla B4xT8192xH16xD128", "peer", extra={"fwd_ms": 1.33, "backward": "failed: x"}),
             _row("peer:sdpa-causal B4xT8192xH16xD128", "peer", fwd_bwd_ms=9.0)],
    "goals": [{"figure": "gated delta fwd+bwd", "goal": "<= causal SDPA", "measured": 183.0, "unit": "ms",
               "ratio": 9.0 / 183.0, "passed": False, "status": "NOT MET", "detail": "peer 9.000 ms"},
              {"figure": "cell lstm", "goal": ">= 1.0x cortexcore", "measured": None, "unit": "ms", "ratio": None,
               "passed": None, "status": "skipped", "detail": "not installed"}],
}


def test_render_has_date_gpu_goals_and_tables():
    md = render(DATA, "docs/figures/x.json")
    assert md.startswith("Measured 2027-01-02 on NVIDIA H100 80GB HBM3 (torch 2.11.0, triton 3.6.0)")
    assert "tf32 `on`, batch=32, seq=256, d=256. Source: `docs/figures/x.json`." in md
    assert "| gated delta fwd+bwd | &lt;= causal SDPA | 183 ms | 0.05 | NOT MET |" in md
    assert "| cell lstm | &gt;= 1.0x cortexcore |  |  | skipped (not installed) |" in md
    assert "| conv | 2.00 | 1.00 | 1.50 | 0.75x | 1.50x |" in md
    assert "| stack:4xAXMS | 100.00 |  |  |  | 1.620 (compile 55.0 s) |  |" in md
    assert "| peer:cortexcore-4xAXMS | not installed (ModuleNotFoundError) |" in md
    assert "| B4xT8192xH16xD128 | 1.500 | 1.330 | 183.00 | n/a | 9.00 |" in md
    with pytest.raises(ValueError, match="has no meta.date"):
        render({**DATA, "meta": {}}, "old.json")


def test_update_doc_rewrites_only_the_generated_part(tmp_path):
    results, doc = tmp_path / "bench.json", tmp_path / "gpu.md"
    results.write_text(json.dumps(DATA))
    doc.write_text(f"# Title\n\nkept\n\n{BEGIN}\nold table\n{END}\n\n## After\nalso kept\n")
    update_doc(results, doc)
    text = doc.read_text()
    assert text.startswith(f"# Title\n\nkept\n\n{BEGIN}\nMeasured 2027-01-02") and "old table" not in text
    assert text.endswith(f"{END}\n\n## After\nalso kept\n")
    update_doc(results, doc)
    assert doc.read_text() == text  # idempotent
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one"):
        update_doc(results, doc)


def test_committed_doc_is_generated_from_its_results_file(tmp_path):
    """docs/gpu.md's measured part is what `cortex bench-report` makes of the file it names."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "gpu.md").read_text()
    part = text.split(BEGIN)[1].split(END)[0]
    source = part.split("Source: `")[1].split("`")[0]
    assert part.lstrip("\n") == render(json.loads((root / source).read_text()), source)
