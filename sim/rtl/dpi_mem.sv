// softnpu DPI-C bulk memory: HDL side of sim/dpi_mem.cpp (the storage Python maps with numpy).
//
// One read port and one write port on a DATA_BYTES-wide bus (a multiple of 8 bytes), byte
// addresses aligned to 8. Synchronous like amaranth.lib.memory with a registered read port:
// rdata holds the word read at the previous rising edge where re was high. A read and a write in
// the same cycle to the same address return the old data (the read call comes first). Several
// instances share the one C array; their order within a cycle is not defined.
`timescale 1ns/1ps
module softnpu_dpi_mem #(
    parameter int ADDR_WIDTH = 32,
    parameter int DATA_BYTES = 8
) (
    input  wire                      clk,
    input  wire                      re,
    input  wire [ADDR_WIDTH-1:0]     raddr,
    output reg  [8*DATA_BYTES-1:0]   rdata,
    input  wire                      we,
    input  wire [ADDR_WIDTH-1:0]     waddr,
    input  wire [8*DATA_BYTES-1:0]   wdata,
    input  wire [DATA_BYTES-1:0]     wstrb
);
    import "DPI-C" function longint unsigned softnpu_mem_read64(input longint unsigned addr);
    import "DPI-C" function void softnpu_mem_write64(input longint unsigned addr,
                                                     input longint unsigned data,
                                                     input byte unsigned strobe);

    localparam int LANES = DATA_BYTES / 8;

    initial begin
        if (DATA_BYTES % 8 != 0 || DATA_BYTES == 0)
            $fatal(1, "softnpu_dpi_mem: DATA_BYTES=%0d is not a positive multiple of 8", DATA_BYTES);
    end

    always @(posedge clk) begin
        if (re)
            for (int i = 0; i < LANES; i++)
                rdata[64*i +: 64] <= softnpu_mem_read64(64'(raddr) + 64'(8*i));
        if (we)
            for (int i = 0; i < LANES; i++)
                if (wstrb[8*i +: 8] != 8'h00)
                    softnpu_mem_write64(64'(waddr) + 64'(8*i), wdata[64*i +: 64], wstrb[8*i +: 8]);
    end
endmodule
