"""Host software: the compiler (model -> program + memory image), the driver and its
backends (simulators, a board over serial, the co-simulated board top), the offload
driver of the MATMUL-only board."""
