"""Datasets: readers for local files, TFDS builders and the loader."""
