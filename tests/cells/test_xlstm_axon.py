"""Axon variants of the xLSTM cells: the behavioural contract and the state groups they carry."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from tests.harness.contract import CHECKS

H = 16
AX = dict(axon=cortexmem.AxonCellConfig(rtu_size=4))
VARIANTS = {
    "mlstm-axon-gates": lambda: cortexmem.mLSTMCellConfig(
        hidden_size=H, num_heads=2, chunk_size=8, use_axon_layer=True, **AX
    ),
    "mlstm-axon-qkv": lambda: cortexmem.mLSTMCellConfig(
        hidden_size=H, num_heads=2, chunk_size=8, use_axon_qkv=True, **AX
    ),
    "mlstm-axon-both-noconv": lambda: cortexmem.mLSTMCellConfig(
        hidden_size=H, num_heads=2, chunk_size=8, conv1d_kernel_size=0, use_axon_layer=True, use_axon_qkv=True
    ),
    "slstm-axon": lambda: cortexmem.sLSTMCellConfig(hidden_size=H, num_heads=2, use_axon_layer=True, **AX),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_xlstm_axon_contract(variant, check):
    torch.manual_seed(0)
    check(cortexmem.build_cell(VARIANTS[variant]()).eval())


def test_state_groups():
    m = cortexmem.build_cell(VARIANTS["mlstm-axon-both-noconv"]())
    st = m.init_state(2)
    assert set(st["mlstm"].keys()) == {"igate", "fgate", "ogate"}
    assert set(st["mlstm_qkv"].keys()) == {"q", "k", "v"}
    s = cortexmem.build_cell(VARIANTS["slstm-axon"]())
    assert set(s.init_state(2)["slstm"].keys()) == {"if_gates", "zo_gates"}
    plain = cortexmem.build_cell(cortexmem.mLSTMCellConfig(hidden_size=H, num_heads=2))
    assert not {"mlstm", "mlstm_qkv"} & set(plain.init_state(2).keys())


def test_slstm_axon_forget_bias_initialised():
    s = cortexmem.build_cell(VARIANTS["slstm-axon"]())
    assert (s.if_gates.bias[H:] >= 2.9).all() and (s.if_gates.bias[:H].abs() < 1).all()
