"""The behavioural contract over the non-default variants (the registered harness only runs ``example``)."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from tests.harness.contract import CHECKS

H = 16
VARIANTS = {
    "axon-srht": lambda: cortexmem.AxonCellConfig(hidden_size=H, use_srht=True, chunk_size=8),
    "axon-srht-noperm-odd": lambda: cortexmem.AxonCellConfig(
        hidden_size=H, rtu_size=11, use_srht=True, srht_permute=False, chunk_size=8
    ),
    "axon-full": lambda: cortexmem.AxonCellConfig(hidden_size=H, rank="full", rtu_size=6, chunk_size=8),
    "xl-axon-qkv": lambda: cortexmem.XLCellConfig(
        hidden_size=H,
        n_heads=2,
        mem_len=5,
        block_size=4,
        use_axon_qkv=True,
        axon=cortexmem.AxonCellConfig(chunk_size=8, rtu_size=4),
    ),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_contract(variant, check):
    torch.manual_seed(0)
    check(cortexmem.build_cell(VARIANTS[variant]()).eval())
