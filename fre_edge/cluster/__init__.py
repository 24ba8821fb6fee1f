"""Work beyond one process: archive scoring in partitions, on Dask (``dask.distributed``) or in-process.

The per-partition function (:func:`.archive.score_partition`) is engine-neutral: plain paths in, one
Parquet file and a small summary out, so Dask runs it today and another engine could call it as it is.
Importing this package imports neither dask nor pyarrow.
"""
