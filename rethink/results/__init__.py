"""Results layer: run directories read leniently, AP curves, the table against the paper."""
