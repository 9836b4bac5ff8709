"""A small int8 classifier bundle built directly with compiler/emit.py, for the host's tests,
`bench_serve` and demos that should not wait for a zoo network to compile.

    input [1, S, S, 3] int8 -> CONV 3x3 stride 2 SAME, C channels, ReLU -> MEAN over H, W
    -> FULLY_CONNECTED to K classes -> logits [1, K] int8

Weights are random (fixed seed); activation scales are calibrated in float on a few random
images so that no layer saturates.  `SampleModel` keeps every integer parameter, so a test can
compute the network independently of the NPU program.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softnpu.compiler import emit, layout
from softnpu.compiler.bundle import Bundle, Manifest, TensorSpec
from softnpu.hdl import isa, numerics
from softnpu.hdl.config import NPUConfig, preset

__all__ = ["SampleModel", "build_sample"]


@dataclasses.dataclass
class QuantLayer:
    """One CONV/FC layer's integer parameters in TFLite's conventions."""
    weights: np.ndarray          # [O, KH, KW, I] int8, per-channel symmetric
    weight_scales: np.ndarray    # [O] float
    bias: np.ndarray             # [O] int32 (scale in_scale * weight_scale)
    multiplier: np.ndarray       # [O] int
    shift: np.ndarray            # [O] int
    in_scale: float
    in_zero_point: int
    out_scale: float
    out_zero_point: int
    act_min: int = -128
    act_max: int = 127


@dataclasses.dataclass
class SampleModel:
    bundle: Bundle
    conv: QuantLayer
    mean: dict                   # in/out scale and zero point, numerics.mean_params
    fc: QuantLayer

    @property
    def input(self) -> TensorSpec:
        return self.bundle.manifest.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.bundle.manifest.outputs[0]


def _align(x: int, a: int = 256) -> int:
    return -(-x // a) * a


def _quantize_layer(w_float, b_float, in_scale, in_zp, out_scale, out_zp, relu) -> QuantLayer:
    o = w_float.shape[0]
    w_scales = np.abs(w_float.reshape(o, -1)).max(axis=1) / 127.0
    w = np.clip(np.round(w_float / w_scales[:, None, None, None]), -127, 127).astype(np.int8)
    bias = np.round(b_float / (in_scale * w_scales)).astype(np.int32)
    mults = [numerics.quantize_multiplier(in_scale * float(s) / out_scale) for s in w_scales]
    return QuantLayer(w, w_scales, bias, np.array([m for m, _ in mults]), np.array([s for _, s in mults]),
                      in_scale, in_zp, out_scale, out_zp, act_min=out_zp if relu else -128)


def _affine(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of an int8 range covering [lo, hi] (which must contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-6) / 255.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def build_sample(config: NPUConfig | str = "tiny", size: int = 16, channels: int = 8, classes: int = 10,
                 seed: int = 0, name: str = "sample", version: int = 1) -> SampleModel:
    """The sample classifier for `config`; the input is an image in [0, 1] ("unit" preprocess)."""
    config = preset(config) if isinstance(config, str) else config
    b = config.cols
    rng = np.random.default_rng(seed)
    h1 = -(-size // 2)
    # float network and its calibration on random images in [0, 1]
    w1 = rng.normal(0, 0.5, (channels, 3, 3, 3))
    b1 = rng.normal(0, 0.1, channels)
    w2 = rng.normal(0, 1.0, (classes, 1, 1, channels))
    b2 = rng.normal(0, 0.1, classes)
    calib = rng.uniform(0, 1, (4, size, size, 3))
    pad_total = max((h1 - 1) * 2 + 3 - size, 0)
    pads = (pad_total // 2, pad_total - pad_total // 2) * 2
    pads = (pads[0], pads[1], pads[0], pads[1])
    xp = np.pad(calib, ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    patches = np.stack([xp[:, i:i + 2 * h1:2, j:j + 2 * h1:2, :] for i in range(3) for j in range(3)], 3)
    conv_f = np.maximum(np.einsum("nhwtc,otc->nhwo", patches.reshape(4, h1, h1, 9, 3),
                                  w1.reshape(channels, 9, 3)) + b1, 0)
    mean_f = conv_f.mean(axis=(1, 2))
    fc_f = mean_f @ w2.reshape(classes, channels).T + b2

    in_scale, in_zp = 1.0 / 255.0, -128
    conv_scale, conv_zp = _affine(0.0, float(conv_f.max()))
    mean_scale, mean_zp = _affine(0.0, float(mean_f.max()))
    fc_scale, fc_zp = _affine(float(fc_f.min()) * 1.5, float(fc_f.max()) * 1.5)
    conv = _quantize_layer(w1, b1, in_scale, in_zp, conv_scale, conv_zp, relu=True)
    fc = _quantize_layer(w2, b2, mean_scale, mean_zp, fc_scale, fc_zp, relu=False)
    mean_p = numerics.mean_params(conv_scale, conv_zp, mean_scale, h1 * h1)
    mean = dict(in_scale=conv_scale, in_zero_point=conv_zp, out_scale=mean_scale, out_zero_point=mean_zp,
                **mean_p)

    def folded(layer: QuantLayer):
        w = layer.weights.reshape(layer.weights.shape[0], -1).astype(np.int64)
        return layer.bias.astype(np.int64) - layer.in_zero_point * w.sum(axis=1)

    blobs = [
        layout.pack_conv_weights(conv.weights, b),
        layout.pack_requant_params(folded(conv), conv.multiplier, conv.shift, b),
        layout.pack_lane_params([mean_p["bias"], mean_p["multiplier"], mean_p["shift"]], b),
        layout.pack_conv_weights(fc.weights, b),
        layout.pack_requant_params(folded(fc), fc.multiplier, fc.shift, b),
    ]
    program_at = 0
    weights_at = _align(program_at + 64 * 1024)
    offsets, weights = [], bytearray()
    for blob in blobs:
        offsets.append(weights_at + len(weights))
        weights += np.ascontiguousarray(blob).tobytes()
        weights += bytes(_align(len(weights)) - len(weights))
    act_at = _align(weights_at + len(weights))
    x = emit.Activation(act_at, size, size, 3)
    y1 = emit.Activation(_align(x.addr + x.nbytes(b)), h1, h1, channels)
    y2 = emit.Activation(_align(y1.addr + y1.nbytes(b)), 1, 1, channels)
    y3 = emit.Activation(_align(y2.addr + y2.nbytes(b)), 1, 1, classes)
    end = _align(y3.addr + y3.nbytes(b))
    program = emit.conv2d(config, x, y1, weights=offsets[0], params=offsets[1], kh=3, kw=3, stride=2,
                          pads=pads, pad_value=in_zp, zero_point=conv_zp, act_min=conv.act_min,
                          act_max=127, layer_id=0, first=True, name="conv")
    program += emit.mean(config, y1, y2, params=offsets[2], zero_point=mean_zp, layer_id=1, name="mean")
    program += emit.conv2d(config, y2, y3, weights=offsets[3], params=offsets[4], kh=1, kw=1, stride=1,
                           pads=(0, 0, 0, 0), pad_value=mean_zp, zero_point=fc_zp, layer_id=2, name="fc")
    program.append(isa.Finish())
    code = isa.encode_program(program)
    if len(code) > weights_at - program_at:
        raise AssertionError(f"sample program of {len(code)} bytes overlaps its weights")
    manifest = Manifest(
        model=name, version=version, config=config.to_dict(),
        inputs=[TensorSpec("input", [1, size, size, 3], "int8", in_scale, in_zp, x.addr)],
        outputs=[TensorSpec("logits", [1, classes], "int8", fc_scale, fc_zp, y3.addr)],
        memory_map=dict(program=program_at, weights=weights_at, weights_bytes=len(weights),
                        activations=act_at, end=end),
        program_instructions=len(program),
        preprocess={"size": size, "mode": "unit"},
        postprocess=[{"op": "dequantize"}, {"op": "softmax"}],
        layers=[{"id": 0, "name": "conv", "kind": "CONV_2D", "macs": h1 * h1 * channels * 27},
                {"id": 1, "name": "mean", "kind": "MEAN", "macs": 0},
                {"id": 2, "name": "fc", "kind": "FULLY_CONNECTED", "macs": channels * classes}],
        source="host.sample")
    return SampleModel(Bundle(manifest, code, bytes(weights)), conv, mean, fc)
