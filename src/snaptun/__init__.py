"""snaptun: the SNAP tunnel over QUIC."""
