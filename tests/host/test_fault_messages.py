"""A device fault reads the same through the gRPC service whichever backend runs the model: the
ISS in the server's process, the ISS in a worker's child process and the RTL simulation each give
INTERNAL with one message, hdl/faults.py's NPUFault (code, instruction, disassembly).

The RTL backend adds a simulator start (about 20 s): SOFTNPU_FAULT_RTL=0 leaves it out."""

import os

import grpc
import numpy as np
import pytest

from softnpu.hdl.faults import NPUFault
from softnpu.host.runtime import Runtime
from softnpu.host.serving.client import PredictionClient, ScoreError

GOOD = np.zeros((1, 16, 16, 3), np.int8)
BACKENDS = ("iss", "iss-process") + (("rtl",) if os.environ.get("SOFTNPU_FAULT_RTL", "1") != "0" else ())


def test_the_broken_model_faults_the_same_through_every_backend(serve, broken_bundle_path):
    messages = {}
    for backend in BACKENDS:
        server = serve(workers=1, backend=backend)
        client = PredictionClient(server.address, model="broken", timeout=120, retries=0)
        with pytest.raises(ScoreError) as info:
            client.predict({"input": GOOD})
        assert info.value.code == grpc.StatusCode.INTERNAL, f"{backend}: {info.value}"
        messages[backend] = info.value.message
    assert len(set(messages.values())) == 1, messages
    # the NPU's own words: the broken bundle's second instruction is zeroed memory
    with pytest.raises(NPUFault) as info:
        Runtime.open(broken_bundle_path).infer({"input": GOOD})
    assert messages["iss"] == f"device fault: {info.value}"
    assert "ILLEGAL_OPCODE (code 1) at instruction 1 [.word 0x0]" in messages["iss"]
