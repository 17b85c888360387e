"""Tools that emit or measure the hardware with Yosys: Verilog (`verilog`), resource counts
(`resources`, `attention_resources`). They sit above `rtl`, which never imports them."""
