// softnpu waveform window: pause, resume and close the trace that the HDL opened with
// $dumpfile/$dumpvars, from DPI-C calls in the harness (sim/rtl_harness.py, sim/waves.py).
//
// Why this file exists: Verilator 5.48 compiles $dumpfile/$dumpvars (the trace opens at the next
// time step's end, every signal from the top) but ignores $dumpoff and $dumpon, so a trace opened
// from the HDL would run to the end of the simulation.  The trace that $dumpvars opens belongs to
// the model's symbol table (Vtop__Syms: cocotb's runner verilates with --prefix Vtop), which dumps
// at every eval_end_step() while its __Vm_dumping flag is set; clearing and setting that flag is
// $dumpoff/$dumpon.  Compiled only into waves builds (sim/toolchain.py), where --trace makes the
// symbol table carry the dumper.  The imports must be `context` so that svGetScope() names the
// calling scope, whose symbol table is the model's.

#include "Vtop__Syms.h"
#include "svdpi.h"

namespace {

Vtop__Syms* model_syms() {
    const VerilatedScope* scope = static_cast<const VerilatedScope*>(svGetScope());
    return scope ? static_cast<Vtop__Syms*>(scope->symsp()) : nullptr;
}

}  // namespace

// pause=1: stop dumping (and flush what was written); pause=0: dump again from this time step.
// Before $dumpvars opened a trace this does nothing.
extern "C" void softnpu_trace_pause(svBit pause) {
    Vtop__Syms* syms = model_syms();
    if (!syms) return;
    const VerilatedLockGuard lock{syms->__Vm_dumperMutex};
    if (!syms->__Vm_dumperp) return;
    if (pause) syms->__Vm_dumperp->flush();
    syms->__Vm_dumping = !pause;
}

// Finish the trace file (FST blocks and hierarchy written out).  The model closes the trace itself
// on destruction only while dumping, so a trace paused at the end of the simulation needs this call
// (the harness makes it from a `final` block).
extern "C" void softnpu_trace_close() {
    Vtop__Syms* syms = model_syms();
    if (!syms) return;
    {
        const VerilatedLockGuard lock{syms->__Vm_dumperMutex};
        if (!syms->__Vm_dumperp) return;
    }
    syms->_traceDumpClose();
}
