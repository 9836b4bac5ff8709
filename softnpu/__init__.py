"""softnpu: hardware-level simulation of an int8 neural-network accelerator.

One import namespace over the repository's four top-level folders (mapped in pyproject.toml):
`softnpu.hdl` (the NPU in Amaranth, its ISA, config and integer arithmetic), `softnpu.sim` (the
ISS and the RTL harness), `softnpu.compiler` (model import, quantization, lowering, bundles) and
`softnpu.host` (device backends, runtime, serving, CLI).  Dependencies point one way:
host -> compiler, sim -> hdl.
"""

__version__ = "0.2.0"
