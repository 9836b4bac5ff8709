// softnpu DPI-C bulk memory: the device DRAM of an RTL simulation as one flat C byte array.
//
// The HDL reaches it through DPI imports (sim/dpi_mem.sv calls softnpu_mem_read64 /
// softnpu_mem_write64, one call per 64-bit lane of its bus). Python, running inside the same
// simulator process under cocotb, reaches it with ctypes.CDLL(None) and views it as a numpy array
// (sim/dpi_mem.py): bulk copies are memcpy, never one VPI write per word. The executable is linked
// with -rdynamic (sim/toolchain.py) so that the extern "C" symbols below are visible to dlsym.
//
// Layout: byte-addressed, little-endian 64-bit lanes (lane at byte address A holds bytes A..A+7).
// Size: SOFTNPU_MEM_BYTES from the environment at first use (default 64 MiB), allocated with
// anonymous mmap so untouched pages cost nothing and read as zero.
// A misaligned or out-of-range access is a fault: it is counted, the first one's address kept,
// reads return 0 and writes are dropped; the simulation itself carries on so Python can report it.

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr uint64_t kDefaultBytes = 64ull << 20;

uint8_t* g_mem = nullptr;
uint64_t g_size = 0;
uint64_t g_faults = 0;
uint64_t g_first_fault_addr = 0;
uint64_t g_reads = 0;   // 64-bit lanes read by the HDL
uint64_t g_writes = 0;  // 64-bit lanes written by the HDL

uint8_t* storage() {
    if (g_mem != nullptr) return g_mem;
    uint64_t size = kDefaultBytes;
    if (const char* env = std::getenv("SOFTNPU_MEM_BYTES")) {
        char* end = nullptr;
        unsigned long long parsed = std::strtoull(env, &end, 0);
        if (end == env || *end != '\0' || parsed == 0 || parsed % 8 != 0) {
            std::fprintf(stderr, "softnpu_dpi_mem: SOFTNPU_MEM_BYTES=%s is not a positive multiple of 8\n", env);
            std::abort();
        }
        size = parsed;
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        std::fprintf(stderr, "softnpu_dpi_mem: cannot map %llu bytes\n", static_cast<unsigned long long>(size));
        std::abort();
    }
    g_mem = static_cast<uint8_t*>(p);
    g_size = size;
    return g_mem;
}

bool check(uint64_t addr, const char* what) {
    storage();
    if (addr % 8 == 0 && addr <= g_size - 8) return true;
    if (g_faults++ == 0) {
        g_first_fault_addr = addr;
        std::fprintf(stderr, "softnpu_dpi_mem: %s at byte address 0x%llx (%s; memory is 0x%llx bytes)\n", what,
                     static_cast<unsigned long long>(addr), addr % 8 ? "misaligned" : "out of range",
                     static_cast<unsigned long long>(g_size));
    }
    return false;
}

}  // namespace

extern "C" {

// ---- DPI imports, called by the HDL (sim/dpi_mem.sv) ----

unsigned long long softnpu_mem_read64(unsigned long long addr) {
    if (!check(addr, "read")) return 0;
    ++g_reads;
    uint64_t v;
    std::memcpy(&v, g_mem + addr, 8);
    return v;
}

void softnpu_mem_write64(unsigned long long addr, unsigned long long data, unsigned char strobe) {
    if (!check(addr, "write")) return;
    ++g_writes;
    if (strobe == 0xff) {
        std::memcpy(g_mem + addr, &data, 8);
        return;
    }
    for (int i = 0; i < 8; ++i)
        if (strobe & (1u << i)) g_mem[addr + i] = static_cast<uint8_t>(data >> (8 * i));
}

// ---- exported to Python through ctypes (sim/dpi_mem.py) ----

uint8_t* softnpu_mem_ptr(void) { return storage(); }
uint64_t softnpu_mem_size(void) { storage(); return g_size; }
uint64_t softnpu_mem_faults(void) { return g_faults; }
uint64_t softnpu_mem_first_fault_addr(void) { return g_first_fault_addr; }
uint64_t softnpu_mem_lanes_read(void) { return g_reads; }
uint64_t softnpu_mem_lanes_written(void) { return g_writes; }

void softnpu_mem_clear_stats(void) {
    g_faults = g_first_fault_addr = g_reads = g_writes = 0;
}

}  // extern "C"
