"""The device memory layout of tensors and parameters: what the host and the compiler write into
device memory and the NPU's DMA reads (hdl/isa.py).

Activations are channel-blocked, [C/b][H][W][b] int8 with b = the array width (config.cols);
weights are whole weight entries [O/b][I/b][KH][KW][b_out][b_in]; parameters are lane vectors
(int32 per lane) in the order the vector instructions read them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_blocked", "from_blocked", "pack_conv_weights", "pack_requant_params",
           "pack_requant_params_double", "pack_lane_params"]


def to_blocked(x: np.ndarray, b: int) -> np.ndarray:
    """[H, W, C] int8 -> [C/b, H, W, b], zero-filling the channels past C."""
    h, w, c = x.shape
    cb = -(-c // b)
    out = np.zeros((cb, h, w, b), dtype=x.dtype)
    for k in range(cb):             # one strided copy per block, straight into its place
        part = x[:, :, k * b:(k + 1) * b]
        out[k, :, :, :part.shape[2]] = part
    return out


def from_blocked(x: np.ndarray, c: int) -> np.ndarray:
    """[C/b, H, W, b] -> [H, W, C]."""
    cb, h, w, b = x.shape
    return np.ascontiguousarray(x.transpose(1, 2, 0, 3).reshape(h, w, cb * b)[:, :, :c])


def pack_conv_weights(w_ohwi: np.ndarray, b: int, groups=None) -> np.ndarray:
    """TFLite filters [O, KH, KW, I] -> weight entries [O/b][I/b][KH][KW][b_out][b_in] int8.

    With `groups` (emit.tap_groups of a kernel too large for one CONV, or dilated), one such array
    per tap group (the group's rows and columns of the kernel), flattened one after the other."""
    if groups is not None and len(groups) > 1:
        return np.concatenate([pack_conv_weights(w_ohwi[:, g.i0:g.i0 + g.kh, g.j0:g.j0 + g.kw, :], b)
                               .reshape(-1) for g in groups])
    o, kh, kw, i = w_ohwi.shape
    ob, ib = -(-o // b), -(-i // b)
    padded = np.zeros((ob * b, kh, kw, ib * b), np.int8)
    padded[:o, :, :, :i] = w_ohwi
    return np.ascontiguousarray(padded.reshape(ob, b, kh, kw, ib, b).transpose(0, 4, 2, 3, 1, 5))


def pack_requant_params(bias, multiplier, shift, b: int) -> np.ndarray:
    """Per-channel (bias, multiplier, shift) -> param entries [O/b][3][b] int32 (REQUANT's layout)."""
    bias, multiplier, shift = (np.broadcast_to(np.asarray(v, np.int64), np.shape(bias))
                               for v in (bias, multiplier, shift))
    o = bias.shape[0]
    ob = -(-o // b)
    out = np.zeros((ob * b, 3), np.int64)
    out[:o] = np.stack([bias, multiplier, shift], axis=1)
    return out.reshape(ob, b, 3).transpose(0, 2, 1).astype(np.int32)


def pack_requant_params_double(bias, real_multiplier, b: int) -> np.ndarray:
    """Per-channel (bias, IEEE double multiplier) -> param entries [O/b][3][b] int32 for REQUANT
    with rounding=double: bias, the multiplier's low word, its high word."""
    bias = np.asarray(bias, np.int64)
    bits = np.broadcast_to(np.asarray(real_multiplier, np.float64), bias.shape).copy().view(np.uint64)
    low = (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
    high = (bits >> np.uint64(32)).astype(np.uint32).view(np.int32)
    return pack_requant_params(bias, low, high, b)


def pack_lane_params(values, b: int) -> np.ndarray:
    """Per-tensor values -> one param entry each, replicated across the lanes."""
    return np.repeat(np.asarray(values, np.int64).astype(np.int32)[:, None], b, axis=1)
