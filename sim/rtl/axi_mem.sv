// softnpu AXI4 memory model: the NPU's DRAM, backed by the DPI-C byte array of sim/dpi_mem.cpp
// that Python maps with numpy (sim/dpi_mem.py).
//
// A pipelined memory, in order (one AXI ID): it holds up to DEPTH read and DEPTH write bursts
// (independent channels), INCR bursts of full-width beats.  A read burst's first beat is ready
// LATENCY cycles after its address handshake; beats go out one per cycle, the next burst's right
// after the last beat of the one before if its latency has passed (the bus width is the
// bandwidth).  A write burst's beats are taken from the cycle after its address handshake, one per
// cycle; its response comes LATENCY cycles after its last beat, whatever bursts follow it.  Beats
// narrower than 8 bytes read/write part of one 64-bit lane.  With `backpressure` high, a
// pseudo-random sequence withholds beats (rvalid), drops wready and delays address acceptance on
// some cycles, to exercise the NPU's handshakes.
`timescale 1ns/1ps
module softnpu_axi_mem #(
    parameter int DATA_BYTES = 16,
    parameter int LATENCY = 32
) (
    input  wire                      clk,
    input  wire                      rst,
    input  wire                      backpressure,
    input  wire [31:0]               araddr,
    input  wire [7:0]                arlen,
    input  wire                      arvalid,
    output reg                       arready,
    output reg  [8*DATA_BYTES-1:0]   rdata,
    output reg                       rlast,
    output reg                       rvalid,
    input  wire                      rready,
    input  wire [31:0]               awaddr,
    input  wire [7:0]                awlen,
    input  wire                      awvalid,
    output reg                       awready,
    input  wire [8*DATA_BYTES-1:0]   wdata,
    input  wire [DATA_BYTES-1:0]     wstrb,
    input  wire                      wlast,
    input  wire                      wvalid,
    output reg                       wready,
    output reg                       bvalid,
    input  wire                      bready
);
    import "DPI-C" function longint unsigned softnpu_mem_read64(input longint unsigned addr);
    import "DPI-C" function void softnpu_mem_write64(input longint unsigned addr,
                                                     input longint unsigned data,
                                                     input byte unsigned strobe);

    function automatic [8*DATA_BYTES-1:0] read_beat(input longint unsigned addr);
        logic [8*DATA_BYTES-1:0] beat;
        longint unsigned lane;
        if (DATA_BYTES >= 8) begin
            for (int i = 0; i < DATA_BYTES / 8; i++)
                beat[64*i +: 64] = softnpu_mem_read64(addr + 64'(8 * i));
        end else begin
            lane = softnpu_mem_read64(addr & ~64'h7);
            beat = lane[8 * (addr & 64'h7) +: 8*DATA_BYTES];
        end
        return beat;
    endfunction

    task automatic write_beat(input longint unsigned addr, input logic [8*DATA_BYTES-1:0] beat,
                              input logic [DATA_BYTES-1:0] strobe);
        longint unsigned lane;
        byte unsigned lane_strobe;
        if (DATA_BYTES >= 8) begin
            for (int i = 0; i < DATA_BYTES / 8; i++)
                if (strobe[8*i +: 8] != 8'h00)
                    softnpu_mem_write64(addr + 64'(8 * i), beat[64*i +: 64], strobe[8*i +: 8]);
        end else begin
            lane = 64'(beat) << (8 * (addr & 64'h7));
            lane_strobe = 8'(strobe) << (addr & 64'h7);
            softnpu_mem_write64(addr & ~64'h7, lane, lane_strobe);
        end
    endtask

    // pseudo-random stalls (a 16-bit LFSR), active only with backpressure
    logic [15:0] lfsr;
    always @(posedge clk) lfsr <= rst ? 16'hACE1 : {lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]};
    wire hold = backpressure && (lfsr[1:0] == 2'b00);

    localparam int DEPTH = 64;                  // bursts held per direction
    longint unsigned now;
    always @(posedge clk) now <= rst ? 64'd0 : now + 64'd1;

    // read engine: the queue of accepted bursts, served in order once each one's latency is over
    logic [31:0]     rq_addr [DEPTH];
    logic [7:0]      rq_len  [DEPTH];
    longint unsigned rq_due  [DEPTH];
    int unsigned     rq_head, rq_tail, rq_count;
    logic [8:0]      rbeat;                     // beat of the head burst on the bus or next
    always @(posedge clk) begin
        int unsigned head, tail, count;
        logic [8:0] beat;
        logic presented;
        if (rst) begin
            arready <= 1'b0; rvalid <= 1'b0; rlast <= 1'b0;
            rq_head <= 0; rq_tail <= 0; rq_count <= 0; rbeat <= 9'd0;
        end else begin
            head = rq_head; tail = rq_tail; count = rq_count; beat = rbeat; presented = rvalid;
            if (rvalid && rready) begin             // a beat taken
                presented = 1'b0;
                if (rlast) begin
                    head = (head + 1) % DEPTH; count = count - 1; beat = 9'd0;
                end else beat = beat + 9'd1;
            end
            if (!presented) begin
                if (count != 0 && rq_due[head] <= now && !hold) begin
                    rdata <= read_beat(64'(rq_addr[head]) + 64'(beat) * DATA_BYTES);
                    rlast <= (beat == {1'b0, rq_len[head]});
                    rvalid <= 1'b1;
                end else begin
                    rvalid <= 1'b0; rlast <= 1'b0;
                end
            end
            if (arvalid && arready) begin           // an address accepted
                rq_addr[tail] <= araddr; rq_len[tail] <= arlen; rq_due[tail] <= now + 64'(LATENCY);
                tail = (tail + 1) % DEPTH; count = count + 1;
            end
            arready <= !hold && count < DEPTH;
            rq_head <= head; rq_tail <= tail; rq_count <= count; rbeat <= beat;
        end
    end

    // write engine: accepted addresses take their beats in order; responses wait out the latency
    logic [31:0]     wq_addr [DEPTH];
    logic [7:0]      wq_len  [DEPTH];
    int unsigned     wq_head, wq_tail, wq_count;
    logic [8:0]      wbeat;                     // beat of the head burst taken next
    longint unsigned bq_due  [DEPTH];
    int unsigned     bq_head, bq_tail, bq_count;
    always @(posedge clk) begin
        int unsigned head, tail, count, bhead, btail, bcount;
        logic [8:0] beat;
        if (rst) begin
            awready <= 1'b0; wready <= 1'b0; bvalid <= 1'b0;
            wq_head <= 0; wq_tail <= 0; wq_count <= 0; wbeat <= 9'd0;
            bq_head <= 0; bq_tail <= 0; bq_count <= 0;
        end else begin
            head = wq_head; tail = wq_tail; count = wq_count; beat = wbeat;
            bhead = bq_head; btail = bq_tail; bcount = bq_count;
            if (wvalid && wready) begin             // a beat of the head burst
                write_beat(64'(wq_addr[head]) + 64'(beat) * DATA_BYTES, wdata, wstrb);
                if (beat == {1'b0, wq_len[head]}) begin
                    head = (head + 1) % DEPTH; count = count - 1; beat = 9'd0;
                    bq_due[btail] <= now + 64'(LATENCY);
                    btail = (btail + 1) % DEPTH; bcount = bcount + 1;
                end else beat = beat + 9'd1;
            end
            if (bvalid && bready) begin             // a response taken
                bhead = (bhead + 1) % DEPTH; bcount = bcount - 1;
            end
            // a response queued before this cycle (the one queued now waits LATENCY anyway)
            if (!bvalid || bready)
                bvalid <= bq_count - 32'(bvalid && bready) != 0 && bq_due[bhead] <= now;
            if (awvalid && awready) begin           // an address accepted
                wq_addr[tail] <= awaddr; wq_len[tail] <= awlen;
                tail = (tail + 1) % DEPTH; count = count + 1;
            end
            awready <= !hold && count < DEPTH && bcount < DEPTH - 1;
            wready <= !hold && count != 0;
            wq_head <= head; wq_tail <= tail; wq_count <= count; wbeat <= beat;
            bq_head <= bhead; bq_tail <= btail; bq_count <= bcount;
        end
    end
endmodule
