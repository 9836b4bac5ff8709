"""Scale-out and FPGA figures: Ray tasks, sweeps, RTL shards, synthesis."""
