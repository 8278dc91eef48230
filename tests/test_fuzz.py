"""A small seeded structure-aware fuzz corpus (tests/fuzzing.py): every mutation of every format,
entropy stage and the container must parse or raise FormatError, within the time and memory
limits; the long run is tools/fuzz.py."""

import fuzzing
import numpy as np
import pytest


@pytest.mark.slow
def test_seeded_fuzz_corpus_has_no_findings():
    report = fuzzing.fuzz(800, seed=0)
    assert report.findings == []
    assert report.outcomes.get("format_error", 0) > 400  # the mutations do reach the checks
    assert report.outcomes.get("ok", 0) > 30  # and some leave a valid file
    blobs = fuzzing.seed_blobs()
    assert set(report.per_seed) >= set(blobs) | set(fuzzing.seed_files(blobs))


def test_traced_fields_cover_the_blob():
    """The field trace finds the header fields in order, inside the body (entropy-coded streams
    are taken whole, not as fields)."""
    blob = fuzzing.seed_blobs()["lsc/huffman/qarray"]
    fields = fuzzing.trace_fields(blob)
    ends = np.array([f.end for f in fields])
    assert np.all(np.diff([f.start for f in fields]) > 0)
    assert ends.max() <= 8 * (len(blob) - 6) and len(fields) >= 8


def test_file_mutations_recompute_lengths_and_crcs():
    """Header and section edits come with their CRC32s recomputed: the checks behind them run."""
    from lscjax import FormatError
    from lscjax._src import container

    blobs = fuzzing.seed_blobs()
    data = fuzzing.seed_files(blobs)["file/ans"]
    fields = {b: fuzzing.trace_fields(b) for b in blobs.values()}
    rng = np.random.default_rng(0)
    messages = []
    for _ in range(60):
        name, case = fuzzing.mutate_file(data, fields, rng)
        try:
            container.unpack(case)
        except FormatError as err:
            messages.append(str(err))
    assert not any("CRC32" in m for m in messages)
    assert len(messages) < 60
