"""The language model over codec tokens: ``config`` (LMConfig and presets), ``layout`` (flat and
time-aligned token layouts, each token's visible key ranges), ``model`` (PyramidLM), ``decode`` (the
fixed-shape cached decode step), ``sampling`` (generation with a key/value cache) and ``api`` (loading
by reference, ``generate_pieces`` and ``generate_audio``)."""
