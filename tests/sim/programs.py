"""Seeded random legal NPU programs for differential testing (RTL vs ISS).

A program is a chain of 1-3 random layers (convolution, fully connected with double rounding,
max and average pooling, MEAN, ADD, MUL by a constant) lowered by compiler/emit.py with random
shapes, random quantization parameters and random data, so every instruction kind, the hardware
loops, padding, tiling, double buffering and the dependency tokens are exercised.
"""

from __future__ import annotations

import numpy as np

from softnpu.compiler import emit, layout
from softnpu.hdl import isa, numerics
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Add, ConvMode, Mul, Rounding
from softnpu.sim.rtl.jobs import Job

PROGRAM_AT = 0x0
REGION = 0x40000            # bytes of device memory per layer (inputs, weights, params, outputs)


def _requant_params(rng, cout, b):
    bias = rng.integers(-3000, 3000, cout)
    mult = rng.integers(1 << 30, (1 << 31) - 1, cout)
    shift = rng.integers(-12, 1, cout)
    return layout.pack_requant_params(bias, mult, shift, b)


class _Layer:
    def __init__(self, config: NPUConfig, rng: np.random.Generator, base: int):
        self.config, self.rng, self.base = config, rng, base
        self.image: list[tuple[int, bytes]] = []
        self.next = base

    def alloc(self, data: np.ndarray | None = None, size: int = 0) -> int:
        addr = self.next
        nbytes = data.nbytes if data is not None else size
        self.next = addr + ((nbytes + 63) // 64) * 64
        assert self.next <= self.base + REGION, "layer does not fit its region"
        if data is not None:
            self.image.append((addr, np.ascontiguousarray(data).tobytes()))
        return addr

    def activation(self, h, w, c) -> emit.Activation:
        x = self.rng.integers(-128, 128, (h, w, c), dtype=np.int8)
        return emit.Activation(self.alloc(layout.to_blocked(x, self.config.cols)), h, w, c)

    def output(self, h, w, c) -> emit.Activation:
        size = -(-c // self.config.cols) * h * w * self.config.cols
        return emit.Activation(self.alloc(size=size), h, w, c)


def random_layer(config: NPUConfig, rng: np.random.Generator, base: int, layer_id: int, first: bool,
                 kind: str | None = None):
    """One random layer: (instructions, memory image, output region, kind)."""
    b = config.cols
    kind = kind or str(rng.choice(["conv", "conv", "fc", "maxpool", "avgpool", "mean", "add", "mul"]))
    L = _Layer(config, rng, base)
    common = dict(layer_id=layer_id, first=first)
    zp = int(rng.integers(-20, 20))
    lo = int(rng.choice([-128, zp]))
    if kind == "conv":
        k = int(rng.choice([1, 2, 3, 5]))
        stride = int(rng.choice([1, 2]))
        h, w = (int(v) for v in rng.integers(k, k + 8, 2))
        cin, cout = (int(v) for v in rng.integers(1, 11, 2))
        pads = tuple(int(v) for v in rng.integers(0, k, 4))
        oh = (h + pads[0] + pads[1] - k) // stride + 1
        ow = (w + pads[2] + pads[3] - k) // stride + 1
        x = L.activation(h, w, cin)
        wt = rng.integers(-127, 128, (cout, k, k, cin), dtype=np.int8)
        y = L.output(oh, ow, cout)
        prog = emit.conv2d(config, x, y, weights=L.alloc(layout.pack_conv_weights(wt, b)),
                           params=L.alloc(_requant_params(rng, cout, b)), kh=k, kw=k, stride=stride,
                           pads=pads, pad_value=int(rng.integers(-128, 128)), zero_point=zp, act_min=lo,
                           **common)
    elif kind == "fc":
        k, n = int(rng.integers(1, 60)), int(rng.integers(1, 13))
        x = L.activation(1, 1, k)
        wt = rng.integers(-127, 128, (n, 1, 1, k), dtype=np.int8)
        reals = rng.uniform(1e-4, 2e-2, n)
        y = L.output(1, 1, n)
        params = layout.pack_requant_params_double(rng.integers(-3000, 3000, n), reals, b)
        prog = emit.conv2d(config, x, y, weights=L.alloc(layout.pack_conv_weights(wt, b)),
                           params=L.alloc(params), kh=1, kw=1, stride=1, pads=(0, 0, 0, 0), pad_value=0,
                           zero_point=zp, act_min=lo, rounding=Rounding.DOUBLE, **common)
    elif kind in ("maxpool", "avgpool"):
        k = int(rng.choice([2, 3]))
        stride = int(rng.choice([1, 2]))
        h, w = (int(v) for v in rng.integers(k, k + 8, 2))
        c = int(rng.integers(1, 10))
        pads = tuple(int(v) for v in rng.integers(0, k, 4)) if kind == "maxpool" else (0, 0, 0, 0)
        oh = (h + pads[0] + pads[1] - k) // stride + 1
        ow = (w + pads[2] + pads[3] - k) // stride + 1
        x = L.activation(h, w, c)
        y = L.output(oh, ow, c)
        mode, divisor, pad_value = (ConvMode.MAX, 1, -128) if kind == "maxpool" else (ConvMode.SUM, k * k, 0)
        prog = emit.pool2d(config, x, y, mode=mode, kh=k, kw=k, stride=stride, pads=pads, pad_value=pad_value,
                           divisor=divisor, act_min=lo, **common)
    elif kind == "mean":
        h, w, c = int(rng.integers(1, 18)), int(rng.integers(1, 18)), int(rng.integers(1, 10))
        x = L.activation(h, w, c)
        y = L.output(1, 1, c)
        p = numerics.mean_params(float(rng.uniform(0.01, 0.1)), int(rng.integers(-20, 20)),
                                 float(rng.uniform(0.01, 0.1)), h * w)
        params = layout.pack_lane_params([p["bias"], p["multiplier"], p["shift"]], b)
        prog = emit.mean(config, x, y, params=L.alloc(params), zero_point=zp, act_min=lo, **common)
    else:  # add, mul
        h, w, c = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 10))
        x = L.activation(h, w, c)
        y = L.output(h, w, c)
        scales = rng.uniform(0.01, 0.1, 3)
        zps = rng.integers(-30, 30, 2)
        if kind == "add":
            p = numerics.add_params(scales[0], zps[0], scales[1], zps[1], scales[2])
            other = L.activation(h, w, c)
            prog = emit.elementwise(config, Add, x, y, b=other, zero_point=zp, act_min=lo,
                                    params=L.alloc(layout.pack_lane_params([p[k] for k in Add.PARAMS], b)),
                                    **common)
        else:
            p = numerics.mul_params(scales[0], zps[0], scales[1], zps[1], scales[2])
            const = np.zeros(x.blocks(b) * b, np.int32)
            const[:c] = rng.integers(-128, 128, c)
            prog = emit.elementwise(config, Mul, x, y, b_const=L.alloc(const), zero_point=zp, act_min=lo,
                                    params=L.alloc(layout.pack_lane_params([p[k] for k in Mul.PARAMS], b)),
                                    **common)
    return prog, L.image, (y.addr, y.nbytes(b)), kind


def random_program(config: NPUConfig, seed: int, kinds: list[str] | None = None, n_layers: int | None = None,
                   backpressure: bool = False) -> Job:
    """A chain of random layers, each in its own memory region, ending with FINISH."""
    rng = np.random.default_rng(seed)
    n = n_layers or (len(kinds) if kinds else int(rng.integers(1, 4)))
    program, image, regions, names = [], [], [], []
    for i in range(n):
        prog, img, region, kind = random_layer(config, rng, base=REGION * (i + 1), layer_id=i, first=i == 0,
                                               kind=kinds[i] if kinds else None)
        program += prog
        image += img
        regions.append(region)
        names.append(kind)
    program.append(isa.Finish())
    data = isa.encode_program(program)
    image.append((PROGRAM_AT, data))
    return Job(f"seed{seed}:{'+'.join(names)}", image, PROGRAM_AT, len(program), regions,
               backpressure=backpressure)
