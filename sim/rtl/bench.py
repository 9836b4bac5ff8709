"""RTL simulation speed: simulated cycles/s and MACs/s of the NPU at a config (default: `default`)
running a convolution-heavy program that keeps the MAC array busy, plus the Verilator build time.

    nox -s bench_rtl [-- --config default --convs 24]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Buffer, ConvMode
from softnpu.sim.rtl import build as rtl_build
from softnpu.sim.rtl import harness as rtl_harness
from softnpu.sim.rtl.jobs import Job, run_jobs

X, W, P, Y, PROGRAM = 0x10000, 0x100000, 0x200000, 0x300000, 0x400000


def conv_program(config, convs: int, blocks: int = 4, out: int = 16):
    """Load a [blocks][out+2][out+2] input tile and 3x3 weights once, then `convs` CONVs of
    blocks x blocks channel blocks at out x out (the array busy), REQUANT, STORE, FINISH."""
    b = config.cols
    side = out + 2
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (blocks, side, side, b), dtype=np.int8)
    w = rng.integers(-127, 128, (blocks * blocks * 9, config.rows, b), dtype=np.int8)
    params = np.zeros((blocks, 3, config.rows), np.int32)
    params[:, 1], params[:, 2] = 1 << 30, -12
    program = [
        isa.Load(buffer=Buffer.PARAM, sram=0, dram=P, blocks=1, rows=1, cols=3 * blocks),
        isa.Load(buffer=Buffer.WGT, sram=0, dram=W, blocks=1, rows=1, cols=blocks * blocks * 9),
        isa.Load(buffer=Buffer.INP, sram=0, dram=X, blocks=blocks, rows=side, cols=side, row_stride=side * b,
                 block_stride=side * side * b, push_next=True),
    ]
    for i in range(convs):
        program.append(isa.Conv(mode=ConvMode.MAC, accumulate=int(i > 0), out_blocks=blocks, in_blocks=blocks,
                                kh=3, kw=3, stride_h=1, stride_w=1, out_h=out, out_w=out, acc=0, inp=0, wgt=0,
                                inp_row=side, inp_block=side * side, pop_prev=i == 0))
    program += [
        isa.Requant(out=0, acc=0, param=0, blocks=blocks, count=out * out, zero_point=0, act_min=-128,
                    act_max=127, push_next=True),
        isa.Store(sram=0, dram=Y, blocks=blocks, rows=out, cols=out, row_stride=out * b,
                  block_stride=out * out * b, pop_prev=True),
        isa.Finish(),
    ]
    image = [(X, x.tobytes()), (W, w.tobytes()), (P, params.tobytes()),
             (PROGRAM, isa.encode_program(program))]
    macs = convs * blocks * blocks * 9 * out * out * config.rows * config.cols
    job = Job("bench", image, PROGRAM, len(program), [(Y, blocks * out * out * b)], max_cycles=50_000_000)
    return job, macs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--convs", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    config = preset(args.config)
    start = time.perf_counter()
    build_dir = rtl_harness.build(config)
    build_wall = time.perf_counter() - start
    info = rtl_build.build_info(build_dir)
    blocks, out = (4, 16) if config.inp_depth >= 4 * 18 * 18 else (2, 14)
    job, macs = conv_program(config, args.convs, blocks, out)
    start = time.perf_counter()
    results = run_jobs(config, [job] * args.repeat, build_dir=build_dir)
    process_wall = time.perf_counter() - start
    walls = sorted(r.wall_s for r in results)
    median = walls[len(walls) // 2]
    if results[0].counters is None:
        raise SystemExit(f"the benchmark program did not complete: fault {results[0].fault}, "
                         f"{results[0].error}")
    counters = results[0].counters
    cycles = counters["cycles"]
    print(f"RTL simulation, config {config.name} ({config.rows}x{config.cols} MACs), Verilator:")
    print(f"  build             {info.get('build_seconds', float('nan')):.1f} s when built "
          f"({build_wall:.1f} s now, cached: {build_wall < 5})")
    print(f"  program           {job.insn_count} instructions, {cycles:,} cycles, "
          f"MAC active {counters['mac_active'] / cycles:.1%}")
    print(f"  wall per run      median {median:.2f} s of {args.repeat} "
          f"(simulator process {process_wall:.1f} s)")
    print(f"  speed             {cycles / median / 1e3:.0f} k cycles/s, {macs / median / 1e6:.0f} M MAC/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
