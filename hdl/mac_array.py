"""The int8 MAC array: `rows` dot products of `cols` int8 pairs per cycle (combinational; the
compute unit registers around it).  Written as plain sums of products so that Verilator emits
tight straight-line code."""

from __future__ import annotations

from amaranth import Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.config import NPUConfig

__all__ = ["MACArray"]


class MACArray(wiring.Component):
    """x: `cols` int8 lanes (lane c in bits [8c+7:8c]); w: `rows x cols` int8, W[r][c] at bits
    [8(r*cols+c)+7 : 8(r*cols+c)]; dots: `rows` int32, dots[r] = sum_c W[r][c] * x[c]."""

    def __init__(self, config: NPUConfig):
        self.config = config
        super().__init__({"x": In(8 * config.cols), "w": In(8 * config.rows * config.cols),
                          "dots": Out(32 * config.rows)})

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.config.rows, self.config.cols
        x = [self.x[8 * c:8 * c + 8].as_signed() for c in range(cols)]
        dots = []
        for r in range(rows):
            products = [x[c] * self.w[8 * (r * cols + c):8 * (r * cols + c) + 8].as_signed()
                        for c in range(cols)]
            while len(products) > 1:          # balanced adder tree
                products = [products[i] + products[i + 1] if i + 1 < len(products) else products[i]
                            for i in range(0, len(products), 2)]
            dot = Signal(signed(32), name=f"dot{r}")      # sign-extended to the accumulator width
            m.d.comb += dot.eq(products[0])
            dots.append(dot)
        m.d.comb += self.dots.eq(Cat(*dots))
        return m

