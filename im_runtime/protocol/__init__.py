"""The sans-I/O protocol core: frame codec, types, connection states."""
