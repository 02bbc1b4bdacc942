"""Retrospective batch scoring: ``headct batch SOURCE --out RESULTS`` over an archive.

A folder tree, zips or a DICOMweb server (``sources``) is scanned for studies without reading
pixel data; worker processes ingest them through the pipeline's own ``read_study`` while this
process infers batches with ``TriagePipeline.run_batch`` (``runner``); each study's row goes to an
append-only journal that makes the run resumable, and the run ends with Parquet and CSV tables and
a summary (``results``, ``summary``), plus an evaluation report when labels are given
(``report``). Shards of one archive (``--shard INDEX/COUNT``) are combined by ``merge``.
"""
