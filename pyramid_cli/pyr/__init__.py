"""The `.pyr` token file: hierarchical codec tokens plus everything needed to decode them.

Modules: ``file`` (``PyrFile``: the file in memory, read, write, edit; ``pyr_summary``), ``header``
(``PyrHeader``: the header alone, its fields, limits and strict reader), ``codes`` (bit packing).

Layout (docs/pyr-format.md has it byte by byte):

    magic b"PYRM" | format version u16 LE | header length u32 LE | header CRC32 u32 LE
    | header: UTF-8 JSON | payload: per level, codes bit-packed MSB-first, padded to a byte

The library holds codes as numpy int64 arrays shaped (n_codebooks, frames), one per level,
level 0 the coarsest. Readers trust nothing: every size, type, range and checksum is checked
and any defect becomes a one-line `FormatError` naming the file (EnCodec's `_read_exactly`
discipline; DAC's pickled `.dac` is what we avoid, dac#53).
"""
