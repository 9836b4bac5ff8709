"""The int8 MAC array: `rows` dot products of `cols` int8 pairs per cycle.  Combinational, or with
`registered_products` the products are registered and the adder trees follow a cycle later (the
conv engine's pipeline).  Written as plain sums of products so that Verilator emits tight
straight-line code."""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.config import NPUConfig

__all__ = ["MACArray", "activation_lanes", "weight_rows", "dot_lanes"]


def activation_lanes(config: NPUConfig) -> data.ArrayLayout:
    """An input entry: `cols` int8 lanes (one channel block of one pixel)."""
    return data.ArrayLayout(signed(8), config.cols)


def weight_rows(config: NPUConfig) -> data.ArrayLayout:
    """A weight entry: `rows` rows of `cols` int8 weights, W[r][c]."""
    return data.ArrayLayout(activation_lanes(config), config.rows)


def dot_lanes(config: NPUConfig) -> data.ArrayLayout:
    """The array's result: `rows` int32 dot products."""
    return data.ArrayLayout(signed(32), config.rows)


class MACArray(wiring.Component):
    """dots[r] = sum_c w[r][c] * x[c], sign-extended to 32 bits; with `registered_products`, of the
    x and w of the cycle before."""

    def __init__(self, config: NPUConfig, registered_products: bool = False):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        self.registered_products = bool(registered_products)
        super().__init__({"x": In(activation_lanes(config)), "w": In(weight_rows(config)),
                          "dots": Out(dot_lanes(config))})

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.config.rows, self.config.cols
        for r in range(rows):
            products = [self.x[c] * self.w[r][c] for c in range(cols)]
            if self.registered_products:
                held = [Signal(signed(16), name=f"product{r}_{c}") for c in range(cols)]
                m.d.sync += [h.eq(p) for h, p in zip(held, products, strict=True)]
                products = held
            while len(products) > 1:          # balanced adder tree
                products = [products[i] + products[i + 1] if i + 1 < len(products) else products[i]
                            for i in range(0, len(products), 2)]
            dot = Signal(signed(32), name=f"dot{r}")      # sign-extended to the accumulator width
            m.d.comb += dot.eq(products[0])
            m.d.comb += self.dots[r].eq(dot)
        return m
