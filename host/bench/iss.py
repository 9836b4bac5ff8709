"""ISS speed: a 3x3, 256->256 channel convolution at 56x56 (ResNet-50's conv3 shape class),
lowered by compiler/emit.py for an NPU config and run on the ISS.  Prints wall time (median of
--repeat runs), MACs/s, instructions, and the modelled cycles and MAC utilization.

    nox -s bench_iss [-- --config default --repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from softnpu.compiler import emit, layout
from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.sim.iss import ISS

X_AT, Y_AT, W_AT, P_AT, PROGRAM_AT = 0x0100_0000, 0x0200_0000, 0x0300_0000, 0x0400_0000, 0x0500_0000


def build(config, h=56, w=56, cin=256, cout=256, k=3, seed=0):
    rng = np.random.default_rng(seed)
    b = config.cols
    iss = ISS(config)
    x = rng.integers(-128, 128, (h, w, cin), dtype=np.int8)
    weights = rng.integers(-127, 128, (cout, k, k, cin), dtype=np.int8)
    bias = rng.integers(-20000, 20000, cout)
    iss.write(X_AT, layout.to_blocked(x, b))
    iss.write(W_AT, layout.pack_conv_weights(weights, b))
    iss.write(P_AT, layout.pack_requant_params(bias, np.full(cout, 1 << 30), np.full(cout, -10), b))
    xa = emit.Activation(X_AT, h, w, cin)
    y = emit.Activation(Y_AT, h, w, cout)
    program = emit.conv2d(config, xa, y, weights=W_AT, params=P_AT, kh=k, kw=k, stride=1,
                          pads=(1, 1, 1, 1), pad_value=0, zero_point=0, first=True) + [isa.Finish()]
    count = iss.load_program(PROGRAM_AT, isa.encode_program(program))
    return iss, count, h * w * cin * cout * k * k


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    config = preset(args.config)
    iss, count, macs = build(config)
    iss.run(PROGRAM_AT, count)                      # warm-up: decode cache, page faults
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        stats = iss.run(PROGRAM_AT, count)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"ISS conv 3x3 256->256 @56x56, config {config.name} ({config.rows}x{config.cols}):")
    print(f"  instructions      {count}")
    print(f"  MACs              {macs / 1e9:.3f} G")
    print(f"  wall time         median {median * 1e3:.1f} ms of {args.repeat} "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
    print(f"  ISS speed         {macs / median / 1e9:.2f} GMAC/s")
    util = stats.utilization()
    print(f"  modelled cycles   {stats.cycles:,} = {stats.seconds * 1e3:.2f} ms at {config.clock_mhz:g} MHz")
    print(f"  MAC utilization   {util['mac']:.1%} (load busy {util['load']:.1%}, "
          f"store busy {util['store']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
