"""Audio in and out: ``io`` (read, write, mix down, resample), ``stream`` (read a long file range by
range without loading it whole) and ``spectra`` (the one STFT-magnitude and mel implementation)."""
