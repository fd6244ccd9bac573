"""sLSTM scan with a hand-written backward: the recurrence of :func:`slstm_naive` without per-op autograd.

The recurrence is nonlinear in ``h`` (through ``R h``), so it has no parallel form and a loop over time is
inherent; what costs on CPU is autograd's bookkeeping of ~25 tiny ops per step. Here the forward loop runs
without a graph, keeps the few per-step tensors the backward needs, and the backward loop applies the chain
rule by hand; the input and recurrent weight gradients are then one batched product each.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slstm_scan(
    wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, forget_gate: str = "sigmoid",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Same contract (and values) as :func:`slstm_naive`."""
    B, T, G, H = wx.shape
    if G != 4 or R.dim() != 4 or R.shape[0] != 4 or R.shape[1] * R.shape[2] != H or R.shape[2] != R.shape[3]:
        raise ValueError(f"slstm: wx must be [B, T, 4, H] and R [4, NH, dh, dh] with NH*dh=H, got "
                         f"{list(wx.shape)} and {list(R.shape)}")
    if forget_gate not in ("sigmoid", "exp"):
        raise ValueError(f"slstm: forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    keep = torch.ones(B, T, dtype=torch.bool, device=wx.device) if resets is None else ~resets
    h_seq, h, c, n, m = _SLSTMScan.apply(wx, R, h0, c0, n0, m0, keep, forget_gate == "sigmoid")
    return h_seq, (h, c, n, m)


def _dense(R: Tensor) -> Tensor:
    """Block-diagonal ``[4, NH, dh, dh]`` -> dense ``[H, 4 * H]`` so that ``h @ W`` gives all four gates."""
    _, NH, dh, _ = R.shape
    W = R.new_zeros(NH, dh, 4, NH, dh)
    idx = torch.arange(NH, device=R.device)
    W[idx, :, :, idx, :] = R.permute(1, 2, 0, 3)
    return W.reshape(NH * dh, 4 * NH * dh)


class _SLSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx, R, h0, c0, n0, m0, keep, sigmoid_forget):
        B, T, _, H = wx.shape
        W = _dense(R)
        keepf = keep.to(wx.dtype)[..., None]  # (B, T, 1)
        neg_inf = torch.full((), float("-inf"), dtype=wx.dtype, device=wx.device)  # no host copy (CUDA graphs)
        h, c, n, m = h0, c0, n0, m0
        saved = {k: [] for k in ("h_in", "c_in", "n_in", "ig", "fg", "z", "o", "use_prev", "sig_f", "fresh")}
        hs = []
        for t in range(T):
            k = keepf[:, t]
            h, c, n, m = h * k, c * k, n * k, m * k
            pre = torch.addmm(wx[:, t].reshape(B, 4 * H), h, W).view(B, 4, H)
            i_raw, f_raw, z_raw, o_raw = pre.unbind(1)
            log_f = torch.nn.functional.logsigmoid(f_raw) if sigmoid_forget else f_raw
            fresh = n == 0
            prev = torch.where(fresh, neg_inf, log_f + m)
            m_new = torch.maximum(prev, i_raw)
            ig, fg = torch.exp(i_raw - m_new), torch.exp(prev - m_new)
            z, o = torch.tanh(z_raw), torch.sigmoid(o_raw)
            for key, val in (("h_in", h), ("c_in", c), ("n_in", n), ("ig", ig), ("fg", fg), ("z", z), ("o", o),
                             ("use_prev", prev >= i_raw), ("fresh", fresh)):
                saved[key].append(val)
            if sigmoid_forget:
                saved["sig_f"].append(torch.sigmoid(-f_raw))  # d logsigmoid(x) / dx
            c = fg * c + ig * z
            n = fg * n + ig
            h = o * c / n
            m = m_new
            hs.append(h)
        stacked = {k: torch.stack(v, 1) for k, v in saved.items() if v}  # (B, T, H) each
        ctx.sigmoid_forget = sigmoid_forget
        ctx.keys = list(stacked)
        ctx.save_for_backward(W, R, keepf, *stacked.values())
        h_seq = torch.stack(hs, 1)
        ctx.mark_non_differentiable(keep)
        return h_seq, h, c, n, m

    @staticmethod
    def backward(ctx, d_hseq, d_h, d_c, d_n, d_m):
        W, R, keepf, *vals = ctx.saved_tensors
        s = dict(zip(ctx.keys, vals, strict=True))
        B, T, H = s["c_in"].shape
        zeros = lambda g: torch.zeros(B, H, dtype=W.dtype, device=W.device) if g is None else g  # noqa: E731
        d_hseq = torch.zeros(B, T, H, dtype=W.dtype, device=W.device) if d_hseq is None else d_hseq
        dh, dc, dn, dm = zeros(d_h), zeros(d_c), zeros(d_n), zeros(d_m)
        W_t = W.t()
        d_pre_all = []
        for t in reversed(range(T)):
            ig, fg, z, o = s["ig"][:, t], s["fg"][:, t], s["z"][:, t], s["o"][:, t]
            c_in, n_in = s["c_in"][:, t], s["n_in"][:, t]
            c = fg * c_in + ig * z
            n = fg * n_in + ig
            dh = dh + d_hseq[:, t]
            # h = o * c / n
            d_o = dh * c / n
            dc = dc + dh * o / n
            dn = dn - dh * o * c / (n * n)
            # c = fg c_in + ig z ; n = fg n_in + ig
            d_fg = dc * c_in + dn * n_in
            d_ig = dc * z + dn
            d_z = dc * ig
            dc_in, dn_in = dc * fg, dn * fg
            # ig = exp(i_raw - m), fg = exp(prev - m), m = max(prev, i_raw)
            g_i, g_f = d_ig * ig, d_fg * fg
            dm_total = dm - g_i - g_f
            use_prev = s["use_prev"][:, t]
            d_prev = g_f + torch.where(use_prev, dm_total, torch.zeros_like(dm_total))
            d_iraw = g_i + torch.where(use_prev, torch.zeros_like(dm_total), dm_total)
            d_prev = torch.where(s["fresh"][:, t], torch.zeros_like(d_prev), d_prev)  # prev = -inf there
            d_logf = d_prev
            dm_in = d_prev
            d_fraw = d_logf * s["sig_f"][:, t] if ctx.sigmoid_forget else d_logf
            d_zraw = d_z * (1 - z * z)
            d_oraw = d_o * o * (1 - o)
            d_pre = torch.stack([d_iraw, d_fraw, d_zraw, d_oraw], 1).reshape(B, 4 * H)
            d_pre_all.append(d_pre)
            dh_in = d_pre @ W_t
            k = keepf[:, t]
            dh, dc, dn, dm = dh_in * k, dc_in * k, dn_in * k, dm_in * k
        d_pre_all = torch.stack(d_pre_all[::-1], 1)  # (B, T, 4H)
        d_wx = d_pre_all.view(B, T, 4, H)
        dW = torch.einsum("bti,btj->ij", s["h_in"], d_pre_all)  # (H, 4H)
        _, NH, dh_, _ = R.shape
        idx = torch.arange(NH, device=R.device)
        dR = dW.view(NH, dh_, 4, NH, dh_)[idx, :, :, idx, :].permute(2, 0, 1, 3)  # (4, NH, dh, dh)
        return d_wx, dR, dh, dc, dn, dm, None, None
