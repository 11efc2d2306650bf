"""Measuring audio and music: ``distances`` (mel, STFT, waveform distances, SI-SDR, chroma, rates),
``transcribe`` (note transcription and onset F1), ``music_stats`` (statistics of a transcription
over time), ``fad`` (Fréchet distance to a corpus), ``visqol`` (ViSQOL v3) and ``plot`` (figures)."""
