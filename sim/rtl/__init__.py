"""The RTL simulator: Verilator toolchain, cached builds, harness, device, jobs, waves."""
