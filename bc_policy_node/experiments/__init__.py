"""Experiments that reproduce behavioral cloning's known behaviours on the package's sim tasks.

Each experiment module exposes `run(out_dir: Path, quick: bool) -> dict` returning
`{"name", "title", "figures": [png paths], "captions": {png: text}, "table_md": str, "numbers": {...}}`
and writes its PNGs + a JSON of its numbers into `out_dir`. `runner.py` runs them and writes
`report.md`.
"""
