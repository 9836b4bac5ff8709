"""NPU faults on every backend (hdl/faults.py): an illegal opcode, a DMA outside the device memory
and a token wait that can never be satisfied each stop the NPU with its code (ERROR), instruction
(ERROR_PC) and address (ERROR_ADDR), raise the interrupt on the RTL, and reach the host as the one
`NPUFault` whose message is the same from the ISS in this process, the ISS in a child process and
the RTL.  The ISS and the RTL agree on which fault a program raises, including when fetch would meet
an illegal instruction after an earlier fault or after FINISH.

Seeded random programs with one fault injected (an illegal word, a DMA past the end, a token never
pushed) agree too: SOFTNPU_FAULT_PROGRAMS sets how many (default 24).

No hang: every RTL run has a cycle budget, every host run a deadline, and each test an alarm.
"""

import copy
import os
import signal

import numpy as np
import pytest

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.faults import NOT_FETCHED, NPUFault
from softnpu.hdl.isa import Buffer, ErrorCode
from softnpu.host.devices.device import DeviceError, open_device
from softnpu.sim.iss import ISS
from softnpu.sim.rtl.jobs import Job, run_jobs
from tests.sim.programs import random_program

CFG = preset("tiny")
AT = 0x1000
B = CFG.dram_bus_bytes
ILLEGAL = 0xF | 0x1234 << 8          # opcode 15 is not defined
LOAD = dict(buffer=Buffer.INP, sram=0, dram=0, blocks=1, rows=1, cols=1)
STORE = dict(sram=0, dram=0x2000, blocks=1, rows=1, cols=1)
GUARD_S = 120


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test that runs past GUARD_S instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError(f"test ran longer than {GUARD_S} s: a hang")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(GUARD_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _words(program) -> bytes:
    return b"".join(w.to_bytes(isa.INSN_BYTES, "little") if isinstance(w, int) else w.encode()
                    for w in program)


# name -> (program, (code, pc, addr) or None for a clean end); the first three are issue 13's faults
CASES = {
    "illegal_opcode": ([isa.Marker(id=1), ILLEGAL, isa.Finish()], (ErrorCode.ILLEGAL_OPCODE, 1, None)),
    "dma_outside_memory": ([isa.Marker(id=1), isa.Load(**{**LOAD, "dram": CFG.dram_bytes - B, "rows": 3},
                                                       row_stride=B), isa.Finish()],
                           (ErrorCode.DRAM_RANGE, 1, CFG.dram_bytes + 2 * B - 1)),
    "token_never_sent": ([isa.Marker(id=1), isa.Marker(id=2, pop_prev=True), isa.Finish()],
                         (ErrorCode.DEADLOCK, 1, None)),
    # FINISH waits for the load side while the load waits for a token from compute: was a hang
    "finish_and_load_wait_on_each_other": ([isa.Load(**LOAD, pop_next=True), isa.Finish()],
                                           (ErrorCode.DEADLOCK, 0, None)),
    "store_waits_for_compute_forever": ([isa.Store(**STORE, pop_prev=True),
                                         isa.Finish()], (ErrorCode.DEADLOCK, 0, None)),
    "no_room_for_a_token": ([isa.Load(**LOAD, push_next=True)] * (CFG.token_queue_depth + 1)
                            + [isa.Finish()],
                            (ErrorCode.DEADLOCK, CFG.token_queue_depth, None)),
    "store_outside_memory": ([isa.Store(**{**STORE, "dram": CFG.dram_bytes - B, "cols": 2}), isa.Finish()],
                             (ErrorCode.DRAM_RANGE, 0, CFG.dram_bytes - B + 2 * CFG.rows - 1)),
    "misaligned_row_stride": ([isa.Load(**{**LOAD, "dram": 0x2000, "rows": 2}, row_stride=B + 1),
                               isa.Finish()],
                              (ErrorCode.DRAM_ALIGN, 0, 0x2000 + B + 1)),
    # the load faults long before fetch reaches the illegal word (the ISS once named the word)
    "dma_fault_before_an_illegal_word": ([isa.Load(**{**LOAD, "dram": CFG.dram_bytes})]
                                         + [isa.Marker(id=i) for i in range(3)] + [ILLEGAL],
                                         (ErrorCode.DRAM_RANGE, 0, CFG.dram_bytes + CFG.cols - 1)),
    "illegal_word_after_finish": ([isa.Marker(id=1), isa.Finish(), ILLEGAL], None),
    # the awaited token comes from the last instruction, still in its queue when fetch is done:
    # not a deadlock (the RTL once said DEADLOCK here while the ISS ran them)
    "compute_waits_for_the_last_store": ([isa.Marker(id=1, pop_next=True),
                                          isa.Store(**STORE, push_prev=True)], None),
    "store_waits_for_the_last_marker": ([isa.Store(**STORE, pop_prev=True),
                                         isa.Marker(id=1, push_next=True)], None),
    "compute_waits_for_the_last_load": ([isa.Marker(id=1, pop_prev=True), isa.Load(**LOAD, push_next=True)],
                                        None),
}


def _fetch_past_the_end() -> Job:
    """Two instructions in the last 64 bytes of memory, three to run: fetch meets the end."""
    at = CFG.dram_bytes - 2 * isa.INSN_BYTES
    return Job("fetch_past_the_end", [(at, _words([isa.Marker(id=1), isa.Marker(id=2)]))], at, 3, [],
               max_cycles=20_000)


N_RANDOM = int(os.environ.get("SOFTNPU_FAULT_PROGRAMS", "24"))
INJECTED = ("illegal", "load_dma", "store_dma", "no_push")


def _injected(seed: int) -> Job:
    """Random program `seed` with one fault injected at a random instruction."""
    job = random_program(CFG, 5000 + seed)
    rng = np.random.default_rng(seed)
    program = isa.decode_program(dict(job.image)[job.insn_addr])
    kind = INJECTED[seed % len(INJECTED)]
    if kind == "illegal":
        words = [insn.encode() for insn in program]
        words[int(rng.integers(0, len(words)))] = ILLEGAL.to_bytes(isa.INSN_BYTES, "little")
        data = b"".join(words)
    else:
        wanted = {"load_dma": lambda x: isinstance(x, isa.Load),
                  "store_dma": lambda x: isinstance(x, isa.Store),
                  "no_push": lambda x: x.push_next or x.push_prev}[kind]
        k = int(rng.choice([i for i, insn in enumerate(program) if wanted(insn)]))
        insn = program[k] = copy.copy(program[k])
        if kind == "no_push":
            insn.push_next = insn.push_prev = False       # a deadlock, unless nobody waited for it
        else:
            insn.dram = CFG.dram_bytes - B
        data = isa.encode_program(program)
    image = [(a, data if a == job.insn_addr else d) for a, d in job.image]
    return Job(f"{kind}:{seed}", image, job.insn_addr, len(data) // isa.INSN_BYTES, [], max_cycles=2_000_000)


def _jobs() -> dict[str, Job]:
    jobs = {name: Job(name, [(AT, _words(program))], AT, len(program), [], max_cycles=20_000)
            for name, (program, _) in CASES.items()}
    jobs["fetch_past_the_end"] = _fetch_past_the_end()
    for seed in range(N_RANDOM):
        jobs[f"random:{seed}"] = _injected(seed)
    return jobs


def _iss(job: Job) -> NPUFault | None:
    iss = ISS(CFG)
    for addr, data in job.image:
        iss.write(addr, data)
    try:
        iss.run(job.insn_addr, job.insn_count)
    except NPUFault as fault:
        return fault
    return None


@pytest.fixture(scope="module")
def rtl():
    jobs = _jobs()
    return dict(zip(jobs, run_jobs(CFG, list(jobs.values())), strict=True))


@pytest.mark.parametrize("name", [*CASES, "fetch_past_the_end"])
def test_the_iss_and_the_rtl_report_the_same_fault(rtl, name):
    job, res = _jobs()[name], rtl[name]
    want = CASES[name][1] if name in CASES else (ErrorCode.DRAM_RANGE, 2, CFG.dram_bytes + isa.INSN_BYTES - 1)
    iss = _iss(job)
    assert res.error is None, f"{name}: the RTL hung: {res.error}"
    assert res.irq, f"{name}: the RTL ended without raising the interrupt"
    if want is None:
        assert res.fault is None and iss is None, f"{name}: RTL {res.npu_fault}, ISS {iss}"
        return
    fault = res.npu_fault
    assert fault is not None, f"{name}: the RTL reported no fault"
    assert (fault.code, fault.pc, fault.addr) == want, f"{name}: RTL {fault}"
    assert iss is not None and iss.same_fault(fault), f"{name}: RTL {fault} but ISS {iss}"
    assert str(iss) == str(fault)


def test_random_programs_with_an_injected_fault_agree(rtl):
    codes = []
    for name, job in _jobs().items():
        if not name.startswith("random:"):
            continue
        res, iss = rtl[name], _iss(job)
        assert res.error is None, f"{job.name}: the RTL hung: {res.error}"
        if iss is None:
            assert res.npu_fault is None, f"{job.name}: RTL {res.npu_fault}, the ISS ran"
        else:
            assert iss.same_fault(res.npu_fault), f"{job.name}: RTL {res.npu_fault} but ISS {iss}"
        codes.append(iss.code if iss else None)
    assert {ErrorCode.ILLEGAL_OPCODE, ErrorCode.DRAM_RANGE, ErrorCode.DEADLOCK} <= set(codes)


def test_the_message_names_code_instruction_disassembly_and_address(rtl):
    dma = rtl["dma_outside_memory"].npu_fault
    assert str(dma).startswith("NPU fault DRAM_RANGE (code 3) at instruction 1 [load buffer=inp sram=0 "
                               f"dram={CFG.dram_bytes - B:#x} blocks=1 rows=3 cols=1 row_stride={B} ")
    assert f"address {CFG.dram_bytes + 2 * B - 1:#x}: a DMA or instruction fetch beyond" in str(dma)
    illegal = rtl["illegal_opcode"].npu_fault
    assert f"at instruction 1 [.word {ILLEGAL:#x}]: opcode not in the instruction table" in str(illegal)
    assert "address" not in str(illegal)
    deadlock = rtl["token_never_sent"].npu_fault
    assert "DEADLOCK (code 5) at instruction 1 [marker id=2 pop_prev]: a token wait" in str(deadlock)
    assert rtl["fetch_past_the_end"].npu_fault.insn == NOT_FETCHED


ACCEPTANCE = ("illegal_opcode", "dma_outside_memory", "token_never_sent")


@pytest.fixture(scope="module")
def devices():
    opened = {backend: open_device(backend, CFG) for backend in ("iss", "iss-process", "rtl")}
    yield opened
    for device in opened.values():
        device.close()


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_every_backend_raises_the_one_fault_with_the_same_message(devices, name):
    program = _words(CASES[name][0])
    messages = {}
    for backend, device in devices.items():
        device.write_memory(AT, np.frombuffer(program, np.uint8))
        with pytest.raises(NPUFault) as info:
            device.run(AT, len(program) // isa.INSN_BYTES, timeout_s=60)
        assert type(info.value) is NPUFault and DeviceError is NPUFault
        assert (info.value.code, info.value.pc, info.value.addr) == CASES[name][1], backend
        messages[backend] = str(info.value)
        # the NPU stopped: STATUS says done and error, and the next program runs
        good = isa.encode_program([isa.Marker(id=7), isa.Finish()])
        device.write_memory(AT, np.frombuffer(good, np.uint8))
        device.run(AT, 2, timeout_s=60)
        assert [m for m, _ in device.read_trace()] == [7], backend
    assert len(set(messages.values())) == 1, messages


def test_the_fault_csrs_hold_code_instruction_and_address():
    iss = ISS(CFG)
    load = isa.Load(**{**LOAD, "dram": CFG.dram_bytes - B, "blocks": 3}, block_stride=1 << 31)
    iss.write(AT, isa.encode_program([load, isa.Finish()]))
    iss.write_csr(isa.CSR.INSN_ADDR, AT)
    iss.write_csr(isa.CSR.INSN_COUNT, 2)
    iss.write_csr(isa.CSR.IRQ_ENABLE, 1)
    iss.write_csr(isa.CSR.CTRL, 1)
    assert iss.irq and iss.read_csr(isa.CSR.STATUS) == 0b110
    last = CFG.dram_bytes - B + (1 << 32) + CFG.cols - 1         # past 2**32: both address words
    assert (iss.read_csr(isa.CSR.ERROR), iss.read_csr(isa.CSR.ERROR_PC)) == (ErrorCode.DRAM_RANGE, 0)
    assert iss.read_csr(isa.CSR.ERROR_ADDR) | iss.read_csr(isa.CSR.ERROR_ADDR_HI) << 32 == last
    iss.write_csr(isa.CSR.CTRL, 2)                                # clear: done, error and the code go
    assert not iss.irq and iss.read_csr(isa.CSR.ERROR) == 0


def test_a_fault_pickles_with_every_field():
    import pickle

    fault = NPUFault(ErrorCode.DRAM_ALIGN, 3, "load ...", 0x1_0000_0005, "row_stride=0x5")
    again = pickle.loads(pickle.dumps(fault))
    assert again.same_fault(fault) and str(again) == str(fault) and again.detail == fault.detail
    assert NPUFault(9, 0, "x").code_name == "UNKNOWN_9"
