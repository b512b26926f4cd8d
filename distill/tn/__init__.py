"""Pure tensor-network math on arrays and pytrees: no Flax, no I/O."""
