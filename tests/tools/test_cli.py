"""``cortex info``."""

from __future__ import annotations

import cortexmem


def test_cli_info():
    from typer.testing import CliRunner

    from cortexmem.cli import app

    res = CliRunner().invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert "LSTMCell" in res.output and cortexmem.__version__ in res.output
